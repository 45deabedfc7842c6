"""`ggc verify --ranks R --target c|cuda`: the tensor-parallel program, one process a rank (MPI for C,
one a GPU with NCCL for CUDA), checked node by node against llama.cpp and against the same program
on one rank.

The captured graph is partitioned (compiler/partition.py) and compiled once; launch_ranks starts R
workers (this module's main). Each loads its slice of the weights and its part of the recorded
leafs (the KV cache splits by heads), then runs every kernel group on its part of llama.cpp's own
values for the group's inputs, as `verify --target c` does (an ALL_REDUCE takes the partial sums
its product just computed), and then the whole program on its own values. Every captured node is
put together from the ranks (split parts side by side, replicated values each checked) and
compared twice, both held to test-backend-ops' limits: with llama.cpp's value, and with the value
the unpartitioned program computes from the same inputs.
"""

from __future__ import annotations

import pickle
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..compiler.passes import root
from ..errors import GgcError
from ..ir.graph import Graph, Tensor
from .compare import NodeResult, nmse, threshold_of, to_float
from .targets import Values, program_compiler, run_checked

GLOBAL_GRAPH = "graph.ggraph"
def _items(t: Tensor) -> tuple[tuple[int, ...], int]:
    """t's addressable items (elements, or blocks of a quantized type) per dim, and their width."""
    return (t.ne[0] // t.type.blck_size, *t.ne[1:]), t.type.type_size


def _offsets(ne: tuple[int, ...], nb: tuple[int, ...], width: int) -> np.ndarray:
    """Byte offsets of every item's bytes, shaped [ne3, ne2, ne1, ne0, width]."""
    idx = np.indices(ne[::-1], dtype=np.int64)  # [4, ne3, ne2, ne1, ne0], i3 first
    offs = sum(idx[3 - k] * nb[k] for k in range(4))
    return offs[..., None] + np.arange(width)


def part_value(cap: Tensor, data: bytes, lt: Tensor, split: int | None, rank: int, ranks: int,
               into: bytes | None = None) -> bytes:
    """The rank's local tensor lt filled with its part of cap's bytes (any strides on both sides);
    bytes of lt's span that lie between its items keep their value from `into`."""
    ne, width = _items(cap)
    vals = np.frombuffer(data, np.uint8)[_offsets(ne, cap.nb, width)]
    if split is not None:
        axis = 3 - split
        n = vals.shape[axis] // ranks
        vals = np.take(vals, np.arange(rank * n, (rank + 1) * n), axis=axis)
    out = np.zeros(lt.nbytes, np.uint8) if into is None else np.frombuffer(into, np.uint8).copy()
    lne, _ = _items(lt)
    out[_offsets(lne, lt.nb, width)] = vals
    return out.tobytes()


def eval_ranks(graph: Graph, gguf: str, leafs: dict[int, bytes], expected: dict[int, bytes],
               ranks: int, exact: bool = True, target: str = "c") -> list[NodeResult]:
    from ..compiler.partition import partition
    from ..formats import ggraph
    from ..runtime.cprogram import CProgram, build
    from ..runtime.ranks import launch_ranks, require_gpus

    if target == "cuda":
        require_gpus(ranks)  # before compiling and running the 1-rank program
    compile_fn = program_compiler(target)
    part = partition([graph], ranks, exact)[0]
    local = part.graph
    with tempfile.TemporaryDirectory(prefix="ggc-verify-ranks-") as tmp:
        work = Path(tmp)
        one_rank = compile_fn(graph, work / "one", debug=True, source=Path(gguf).name)
        with CProgram(one_rank) as prog:
            prog.load_weights(gguf)
            one = run_checked(prog, graph, leafs, lambda t, _cur: expected.get(t.id))
        build(compile_fn(local, work / "program", debug=True, source=Path(gguf).name))
        ggraph.save(graph, work / GLOBAL_GRAPH)
        (work / "reference.pkl").write_bytes(pickle.dumps((leafs, expected)))
        cmd = [sys.executable, "-m", "ggc.oracle.ranks", str(work), gguf, "exact" if exact else "sum", target]
        run = launch_ranks(ranks, cmd, target, capture=True)
        if run.returncode != 0:
            raise GgcError(f"the {ranks}-rank {target} program failed:\n{run.stdout}{run.stderr or ''}")
        values: list[Values] = [pickle.loads((work / f"values{r}.pkl").read_bytes()) for r in range(ranks)]

    last: dict[int, Tensor] = {}  # captured id -> the local tensor that holds its final value
    for lid, loc in part.origin.items():
        if not loc.partial:
            last[loc.tensor.id] = local.tensors[lid]

    def whole(lt: Tensor) -> list[np.ndarray]:
        """A node's value put together from the ranks: one array, or one per rank where each holds all."""
        parts = [to_float(lt, v[0][lt.id]).reshape(lt.ne[::-1]) for v in values]
        split = part.origin[lt.id].split
        if split is None:
            return [x.reshape(-1) for x in parts]
        return [np.concatenate(parts, axis=3 - split).reshape(-1)]

    results = []
    for t in graph.nodes:
        lt = last.get(t.id)
        if lt is None or lt.id not in values[0][0]:
            results.append(NodeResult(t, 0.0, threshold_of(t), note="fused"))
            continue
        ref, ref1 = to_float(t, expected[t.id]), to_float(t, one[0][t.id]) if t.id in one[0] else None
        ours = whole(lt)
        err = max(nmse(ref, x) for x in ours)
        # the 1-rank program may fuse it away (its groups differ): then llama.cpp's value alone judges
        err1 = max(nmse(ref1, x) for x in ours) if ref1 is not None else None
        results.append(NodeResult(t, err, threshold_of(t), chained=err1, check_chained=err1 is not None))
    return results


def ranks_evaluator(ranks: int, exact: bool = True, target: str = "c"
                    ) -> Callable[[Graph, str, dict[int, bytes], dict[int, bytes]], list[NodeResult]]:
    return lambda g, gguf, leafs, expected: eval_ranks(g, gguf, leafs, expected, ranks, exact, target)


def _worker(work: Path, gguf: str, exact: bool, target: str) -> None:
    """One rank: its part of the leafs and of the reference values, run checked, hand back every node."""
    from ..compiler.partition import partition
    from ..formats import ggraph
    from ..runtime.cprogram import CProgram
    from ..runtime.ranks import rank_env

    where = rank_env()
    if where is None:
        raise GgcError("run this as a rank of a program (ggc verify --ranks starts it)")
    graph = ggraph.load(work / GLOBAL_GRAPH)
    part = partition([graph], where[1], exact)[0]  # the same partition the parent compiled
    local, origin = part.graph, part.origin
    leafs, expected = pickle.loads((work / "reference.pkl").read_bytes())
    compiled = program_compiler(target)(local, work / "program", debug=True, reuse_existing=True)
    with CProgram(compiled) as prog:
        r, ranks = prog.rank, part.ranks

        def mine(t: Tensor, data: bytes, into: bytes | None = None) -> bytes:
            loc = origin[t.id]
            return part_value(loc.tensor, data, t, loc.split, r, ranks, into)

        def reference(t: Tensor, current: bytes) -> bytes | None:
            loc = origin[t.id]
            if loc.partial or loc.tensor.id not in expected:
                return None  # a partial sum has no reference: the product's own value goes on
            return mine(t, expected[loc.tensor.id], current)

        local_leafs = {t.id: mine(t, leafs[origin[t.id].tensor.id]) for t in local.leafs
                       if origin[t.id].tensor.id in leafs and root(t) is t}
        prog.load_weights(gguf)
        got = run_checked(prog, local, local_leafs, reference)
    (work / f"values{r}.pkl").write_bytes(pickle.dumps(got))


if __name__ == "__main__":
    try:
        _worker(Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "exact", sys.argv[4] if len(sys.argv) > 4 else "c")
    except GgcError as e:
        print(f"ggc: error: {e}", file=sys.stderr)
        sys.exit(2)
