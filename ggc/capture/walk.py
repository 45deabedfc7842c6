"""Walk a live ggml_cgraph into the IR, and compare a live graph with an IR graph field by field."""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import GgcError
from ..ir import ops as opt
from ..ir import params as prm
from ..ir.graph import GGML_FLAGS, DataBinding, Graph, Tensor
from ..ir.types import TYPES
from .ggml_lib import GGML_MAX_SRC, Ggml, GgmlCgraphHead, GgmlTensor

# Decides a leaf's role flags and data binding: (ptr, struct) -> (extra flags, binding).
Classifier = Callable[[int, GgmlTensor], tuple[frozenset[str], DataBinding]]


@dataclass
class LiveGraph:
    """The pointers of a live graph, leafs first then nodes: index i is IR tensor %i."""

    ptrs: list[int]
    n_leafs: int


def graph_pointers(cgraph: int) -> LiveGraph:
    head = GgmlCgraphHead.from_address(cgraph)
    leafs = [head.leafs[i] for i in range(head.n_leafs)]
    nodes = [head.nodes[i] for i in range(head.n_nodes)]
    return LiveGraph(leafs + nodes, len(leafs))


def _flag_names(flags: int) -> set[str]:
    return {name for name, bit in GGML_FLAGS.items() if flags & bit}


def to_ir(g: Ggml, cgraph: int, classify: Classifier | None = None) -> tuple[Graph, LiveGraph]:
    """Read every tensor of a live graph into an IR Graph (tensors in ggml's leaf, then node order)."""
    live = graph_pointers(cgraph)
    index = {p: i for i, p in enumerate(live.ptrs)}
    if len(index) != len(live.ptrs):
        raise GgcError("the ggml graph lists a tensor twice")
    out: list[Tensor] = []
    for i, p in enumerate(live.ptrs):
        s = g.tensor(p)
        name = s.name.decode("utf-8", "replace")
        where = f"tensor {i} {name!r}"
        tname = g.type_names.get(s.type)
        if tname is None or tname not in TYPES:
            raise GgcError(f"{where}: ggml type number {s.type} is unknown to ggc")
        if not 0 <= s.op < len(g.op_names):
            raise GgcError(f"{where}: op number {s.op} is outside ggml's op table")
        op = g.op_names[s.op]
        if (op == "NONE") != (i < live.n_leafs):
            raise GgcError(f"{where}: op {op} is listed among the graph's {'leafs' if i < live.n_leafs else 'nodes'}")
        words = [w & 0xFFFFFFFF for w in s.op_params]
        params, raw = prm.decode(opt.lookup(op), words, g.enum_name)
        srcs = list(s.src[:GGML_MAX_SRC])
        while srcs and not srcs[-1]:
            srcs.pop()
        src: list[Tensor | None] = []
        for j, sp in enumerate(srcs):
            if not sp:
                src.append(None)
            elif sp not in index or index[sp] >= i:
                raise GgcError(f"{where}: source {j} is not an earlier tensor of the graph")
            else:
                src.append(out[index[sp]])
        view_src = None
        if s.view_src:
            if s.view_src not in index or index[s.view_src] >= i:
                raise GgcError(f"{where}: view parent is not an earlier tensor of the graph")
            view_src = out[index[s.view_src]]
        flags = _flag_names(s.flags)
        data: DataBinding = None
        if op == "NONE" and classify is not None:
            extra, data = classify(p, s)
            flags |= extra
        out.append(Tensor(
            id=i, type=TYPES[tname], ne=tuple(s.ne), nb=tuple(s.nb), op=op, params=params, raw=raw,
            src=src, view_src=view_src, view_offs=s.view_offs if view_src is not None else 0,
            flags=frozenset(flags), name=name, data=data,
        ))
    graph = Graph(out)
    graph.validate()
    return graph, live


def compare_live(g: Ggml, graph: Graph, cgraph: int) -> list[str]:
    """Field-by-field differences between an IR graph and a live ggml graph (empty: identical)."""
    live = graph_pointers(cgraph)
    diffs: list[str] = []
    if len(live.ptrs) != len(graph.tensors):
        return [f"tensor count: live {len(live.ptrs)}, IR {len(graph.tensors)}"]
    index = {p: i for i, p in enumerate(live.ptrs)}
    for t, p in zip(graph.tensors, live.ptrs):
        s = g.tensor(p)
        words = prm.encode(t.opdef, t.params, t.raw, g.enum_value)
        live_src = list(s.src[:GGML_MAX_SRC])
        ir_src = [index_of(x) for x in t.src] + [None] * (GGML_MAX_SRC - len(t.src))
        fields = {
            "type": (g.type_names.get(s.type), t.type.name),
            "ne": (tuple(s.ne), t.ne),
            "nb": (tuple(s.nb), t.nb),
            "op": (g.op_names[s.op], t.op),
            "op_params": ([w & 0xFFFFFFFF for w in s.op_params], words),
            "flags": (_flag_names(s.flags), set(t.flags) & set(GGML_FLAGS)),
            "src": ([index.get(x) if x else None for x in live_src], ir_src),
            "view_src": (index.get(s.view_src) if s.view_src else None, index_of(t.view_src)),
            "view_offs": (s.view_offs if s.view_src else 0, t.view_offs),
            "name": (s.name.decode("utf-8", "replace"), t.name),
        }
        diffs += [f"{t.label()}: {k}: live {a!r} != IR {b!r}" for k, (a, b) in fields.items() if a != b]
    return diffs


def index_of(t: Tensor | None) -> int | None:
    return None if t is None else t.id


def read_tensor_bytes(g: Ggml, ptr: int) -> bytes:
    """The bytes of a tensor that lives in a backend buffer (host memory on the CPU backend)."""
    n = g.base.ggml_nbytes(ptr)
    buf = C.create_string_buffer(n)
    g.base.ggml_backend_tensor_get(ptr, buf, 0, n)
    return buf.raw
