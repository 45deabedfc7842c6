"""Evaluators for `ggc verify --target`: each computes a captured graph from the recorded leaf
values and checks every node against the reference values (llama.cpp's, through its callback).

- ggml: the graph rebuilt inside ggml from the IR (proves that capture is complete);
- c, cuda: the generated program, debug build (every intermediate kept). Each kernel group runs on the
  reference's own values for its inputs, as test-backend-ops checks one op at a time: that is the
  verdict. The whole program is then also run on its own values, and that chained error is shown.
  A CUDA group that reads the group before it through the work buffer (the attention output
  product, whose q8 activations the attention call writes: cuda/emit.py handoffs) runs after that
  group on the reference's inputs, so the two are one unit, and the product's nodes are held to the
  looser limit of the two (noted "after <attention node>").
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from ..backends.c.emit import CompiledC
from ..compiler.passes import root
from ..errors import GgcError
from ..ir.graph import Graph, Tensor
from .compare import NodeResult, compare, nmse, threshold_of, to_float
from .rebuild import Rebuilt, leaf_source

# (graph, gguf path, leaf values by id, reference node values by id) -> one result per node
Evaluator = Callable[[Graph, str, dict[int, bytes], dict[int, bytes]], list[NodeResult]]


def eval_ggml(graph: Graph, gguf: str, leafs: dict[int, bytes], expected: dict[int, bytes]) -> list[NodeResult]:
    results: list[NodeResult] = []
    with Rebuilt(graph) as rb:
        rb.bind_leafs(leaf_source(graph, gguf, leafs))
        rb.run(lambda t, out: results.append(compare(t, expected[t.id], out)))
    return results


# node values after their own group ran on reference inputs, and after the whole program ran
Values = tuple[dict[int, bytes], dict[int, bytes]]


def run_checked(prog, graph: Graph, leafs: dict[int, bytes],  # noqa: ANN001 - a CProgram
                reference: Callable[[Tensor, bytes], bytes | None]) -> Values:
    """Each kernel group on the reference's values for its inputs (reference(t, current bytes): t's
    value, None to keep the program's own), then the whole program on its own values."""
    p = prog.plan
    group_of = {t.id: g for g in p.groups for t in g.nodes}

    def reset_leafs() -> None:
        for t in graph.leafs:
            if t.id in leafs and p.has_memory(t):
                prog.set(t, leafs[t.id])

    reset_leafs()
    per_group: dict[int, bytes] = {}
    done: set[int] = set()
    for t in graph.nodes:
        g = group_of.get(t.id)
        if g is not None and g.id not in done:
            for s in g.inputs():
                if not s.is_leaf and p.has_memory(s) and (v := reference(s, prog.get(s))) is not None:
                    prog.set(s, v)
            prog.run_group(g.id)
            done.add(g.id)
        if p.has_memory(t):
            per_group[t.id] = prog.get(t)
    reset_leafs()
    prog.run()
    return per_group, {t.id: prog.get(t) for t in graph.nodes if p.has_memory(t)}


def program_compiler(target: str) -> Callable[..., CompiledC]:
    """compile_c or compile_cuda (the same signature) for a generated-program target: "c" or "cuda"."""
    if target == "cuda":
        from ..backends.cuda.emit import compile_cuda

        return compile_cuda
    from ..backends.c.emit import compile_c

    return compile_c


def eval_c(graph: Graph, gguf: str, leafs: dict[int, bytes], expected: dict[int, bytes],
           workdir: str | Path | None = None, target: str = "c") -> list[NodeResult]:
    from ..runtime.cprogram import CProgram

    with tempfile.TemporaryDirectory(prefix="ggc-verify-") as tmp:
        out = Path(workdir or tmp) / "program"
        compiled = program_compiler(target)(graph, out, debug=True, source=Path(gguf).name)
        p = compiled.plan
        handoffs: dict[int, int] = {}  # group -> the group before it whose own result it reads (CUDA)
        if target == "cuda":
            from ..backends.cuda.emit import handoffs as handoffs_of

            handoffs = handoffs_of(p)
        with CProgram(compiled) as prog:
            prog.load_weights(gguf)
            per_group, whole = run_checked(prog, graph, leafs, lambda t, _current: expected[t.id])
    fused = {t.id for g in p.groups for t in g.nodes}
    group_of = {t.id: g.id for g in p.groups for t in g.nodes}
    results = []
    for t in graph.nodes:
        if not p.has_memory(t):
            # a view of a result that its group keeps to itself (K roped into the cache) is fused too
            if root(t).id not in fused:
                raise GgcError(f"{t.label()}: the program drops a node the reference computed")
            results.append(NodeResult(t, 0.0, threshold_of(t), note="fused"))
        else:
            r = compare(t, expected[t.id], per_group[t.id])
            if (a := handoffs.get(group_of.get(t.id, -1))) is not None:  # one unit with the group before
                r.limit = max(r.limit, *(threshold_of(x) for x in p.groups[a].nodes))
                r.note = f"after {p.groups[a].nodes[-1].label()}"
            r.chained = nmse(to_float(t, expected[t.id]), to_float(t, whole[t.id]))
            results.append(r)
    return results


def eval_cuda(graph: Graph, gguf: str, leafs: dict[int, bytes], expected: dict[int, bytes]) -> list[NodeResult]:
    """The generated CUDA program, checked exactly as the C one (needs a GPU)."""
    return eval_c(graph, gguf, leafs, expected, target="cuda")


TARGETS: dict[str, Evaluator] = {"ggml": eval_ggml, "c": eval_c, "cuda": eval_cuda}
