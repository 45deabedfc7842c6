"""Check C kernels one node at a time against ggml, as test-backend-ops does.

check(build) builds a graph with the real ggml C API, computes it in ggml, then runs the C kernel
of every non-view node on ggml's own values for that node's sources, and compares the result
with ggml's value of the node (NMSE under test-backend-ops' threshold).
"""

from __future__ import annotations

from collections.abc import Callable

from ggc.backends.c.abi import run_node
from ggc.capture.builder import GraphBuilder, Ref
from ggc.ir.graph import Graph, Tensor
from ggc.oracle.compare import NodeResult, compare


def node_inputs(graph: Graph, values: dict[int, bytes], leaf: dict[int, bytes], t: Tensor) -> tuple[list, bytes | None]:
    """Source bytes for t, and what its destination memory held before it ran (for writes into views)."""

    def value(s: Tensor) -> bytes:
        return leaf[s.id] if s.is_leaf else values[s.id]

    srcs = [None if s is None else value(s) for s in t.src]
    dst_init = None
    if t.view_src is not None:
        parent = value(t.view_src)
        dst_init = parent[t.view_offs : t.view_offs + t.nbytes]
    return srcs, dst_init


def check(build: Callable[[GraphBuilder], Ref]) -> list[NodeResult]:
    with GraphBuilder() as b:
        out = build(b)
        graph, live = b.capture_live(out)
        values = b.compute()
        leaf = {i: b.data.get(p, bytes(graph.tensors[i].nbytes)) for i, p in enumerate(live.ptrs[: live.n_leafs])}
    results = []
    for t in graph.nodes:
        if t.opdef.view and t.op not in ("CPY", "SET_ROWS"):
            continue  # views are offsets and strides, not kernels
        srcs, dst_init = node_inputs(graph, values, leaf, t)
        got = run_node(t, srcs, dst_init)
        results.append(compare(t, values[t.id], got))
    return results


def assert_ok(build: Callable[[GraphBuilder], Ref]) -> None:
    results = check(build)
    assert results, "no kernel ran"
    bad = [(r.tensor.label(), r.tensor.op, r.nmse) for r in results if not r.ok]
    assert not bad, bad
