"""The C target's run-time KV length: FLASH_ATTN_EXT reads only the first n_kv cells.

llama.cpp pads the KV cells that attention reads (n_kv) to a multiple of 256 and masks every cell
past the last used one with -inf. The captured graph spans the whole cache; the program reads
ggc_work.n_kv (set by ggc_model_set_n_kv) to attend over the first n_kv cells only.

- node by node (ggc.backends.c.abi.run_node(..., n_kv=)): with a causal mask, n_kv = 256 or 512
  gives exactly the result of n_kv = 0 (all cells); with cells past n_kv left unmasked (a trap),
  the result equals ggml's on a graph of n_kv cells, so the cells past n_kv are never read;
- end to end: a tiny model's prefill and decode program at ctx 1024, with set_n_kv per step,
  gives the same logits as with set_n_kv(0).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ggc.backends.c.abi import run_node
from ggc.capture.builder import GraphBuilder, Ref
from ggc.ir.graph import Tensor
from ggc.ir.types import TYPES
from ggc.oracle.compare import compare
from tests.kernel_check import node_inputs
from tests.test_kernels_ops import _avx2_build, call

RNG = np.random.default_rng(256)
Build = Callable[[GraphBuilder], Ref]
KV_PAD = 256


# ---------------------------------------------------------------- node builders (shared with the CUDA twin)

def _kv_view(b: GraphBuilder, tname: str, vals: np.ndarray, d: int, h_kv: int, n_kv: int, name: str) -> Ref:
    """[d, n_kv, h_kv]: the first n_kv cells of a KV cache holding vals [kv_size, h_kv * d], as llama.cpp views it"""
    if tname == "f16":
        data = vals.astype(np.float16).tobytes()
    elif tname == "f32":
        data = vals.tobytes()
    else:
        data = b.g.quantize(tname, vals.reshape(-1, d))
    cache = b.tensor(tname, (h_kv * d, vals.shape[0]), name, data=data)
    rs = TYPES[tname].row_size(d)
    v = call(b, "view_4d", "tllllzzzz", cache, d, h_kv, n_kv, 1, rs, rs * h_kv, rs * h_kv * n_kv, 0)
    return call(b, "permute", "tiiii", v, 0, 2, 1, 3)


def attn_graph(kv: str, n_kv: int, q: np.ndarray, kc: np.ndarray, vc: np.ndarray, mask: np.ndarray) -> Build:
    """FLASH_ATTN_EXT of q [n_q, heads, d] over the first n_kv cells of caches kc, vc [kv_size, heads_kv * d],
    with the first n_kv columns of mask [n_q, kv_size]"""
    n_q, heads, d = q.shape
    heads_kv = kc.shape[1] // d

    def build(b: GraphBuilder) -> Ref:
        qt = b.tensor("f32", (d, heads, n_q), "q", input=True, data=q)
        qp = call(b, "permute", "tiiii", qt, 0, 2, 1, 3)
        k = _kv_view(b, kv, kc, d, heads_kv, n_kv, "k_cache")
        v = _kv_view(b, kv, vc, d, heads_kv, n_kv, "v_cache")
        m16 = np.ascontiguousarray(mask[:, :n_kv]).astype(np.float16)
        m = b.tensor("f16", (n_kv, n_q), "mask", input=True, data=m16)
        return b.op("flash_attn_ext", qp, k, v, m, 1.0 / np.sqrt(d), 0.0, 0.0)

    return build


def fa_node(build: Build, n_threads: int = 1) -> tuple[Tensor, list, bytes | None, bytes]:
    """the FLASH_ATTN_EXT node of the graph: (node, source bytes, destination's initial bytes, ggml's value)"""
    with GraphBuilder() as b:
        out = build(b)
        graph, live = b.capture_live(out)
        values = b.compute(n_threads)
        leaf = {i: b.data.get(p, bytes(graph.tensors[i].nbytes)) for i, p in enumerate(live.ptrs[: live.n_leafs])}
    (t,) = [t for t in graph.nodes if t.op == "FLASH_ATTN_EXT"]
    srcs, dst_init = node_inputs(graph, values, leaf, t)
    return t, srcs, dst_init, values[t.id]


def causal_case(n_q: int, heads: int, heads_kv: int, total: int, n_past: int, d: int = 64,
                trap_from: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """q, k cache, v cache and llama.cpp's causal mask for n_q tokens at positions n_past .. n_past + n_q - 1
    in a cache of `total` cells. trap_from: cells from there on are left unmasked (0), so that reading
    them changes the result."""
    q = RNG.standard_normal((n_q, heads, d)).astype(np.float32)
    kc = RNG.standard_normal((total, heads_kv * d)).astype(np.float32)
    vc = RNG.standard_normal((total, heads_kv * d)).astype(np.float32)
    pos = np.arange(n_past, n_past + n_q)[:, None]
    mask = np.where(np.arange(total)[None, :] <= pos, 0.0, -np.inf).astype(np.float32)
    if trap_from is not None:
        mask[:, trap_from:] = 0.0
    return q, kc, vc, mask


def n_kv_values(used: int, total: int) -> list[int]:
    """llama.cpp's padded n_kv for `used` cells, and the next multiple of 256 too, when both fit"""
    first = (used + KV_PAD - 1) // KV_PAD * KV_PAD
    return [n for n in (first, first + KV_PAD) if n < total]


# (kv type, n_q, heads, heads_kv, cache cells, n_past): decode, a few queries, GQA and not, and a
# prompt of 64 (ggml's tiled path for f16)
CASES = [
    ("f16", 1, 8, 2, 512, 100),
    ("f16", 1, 4, 4, 768, 250),
    ("f16", 5, 8, 2, 768, 120),
    ("f16", 64, 4, 2, 768, 150),
    ("q8_0", 1, 8, 2, 512, 100),
    ("q8_0", 1, 4, 4, 768, 250),
    ("q8_0", 5, 8, 2, 768, 120),
    ("q8_0", 3, 8, 1, 768, 300),
]
IDS = [f"{kv}-q{n_q}-h{h}:{hk}-kv{total}-past{past}" for kv, n_q, h, hk, total, past in CASES]


# ---------------------------------------------------------------- node by node

@pytest.mark.parametrize(("kv", "n_q", "heads", "heads_kv", "total", "n_past"), CASES, ids=IDS)
def test_flash_attn_n_kv_equals_all_cells(kv: str, n_q: int, heads: int, heads_kv: int, total: int,
                                          n_past: int) -> None:
    """with llama.cpp's causal mask, attending over the first n_kv cells is attending over all (bit for bit)"""
    case = causal_case(n_q, heads, heads_kv, total, n_past)
    t, srcs, dst_init, ref = fa_node(attn_graph(kv, total, *case))
    full = run_node(t, srcs, dst_init, n_kv=0)
    assert compare(t, ref, full).ok
    for n_kv in [*n_kv_values(n_past + n_q, total), total, total + KV_PAD]:  # past the cells: all of them
        assert run_node(t, srcs, dst_init, n_kv=n_kv) == full, n_kv


@pytest.mark.parametrize(("kv", "n_q", "heads", "heads_kv", "total", "n_past"), CASES, ids=IDS)
def test_flash_attn_n_kv_reads_no_cell_past_it(kv: str, n_q: int, heads: int, heads_kv: int, total: int,
                                              n_past: int) -> None:
    """cells past n_kv unmasked: the kernel's result is ggml's on the graph of n_kv cells (llama.cpp's
    graph at that n_kv), bit for bit on the AVX2 build; over all cells it would differ"""
    for n_kv in n_kv_values(n_past + n_q, total):
        case = causal_case(n_q, heads, heads_kv, total, n_past, trap_from=n_kv)
        threads = 2 if n_q == 1 else 1  # decode over >= 512 cells: ggml's split-KV path, one span per thread
        t, srcs, dst_init, _ = fa_node(attn_graph(kv, total, *case))
        _, _, _, ref = fa_node(attn_graph(kv, n_kv, *case), threads)
        got = run_node(t, srcs, dst_init, n_threads=threads, n_kv=n_kv)
        assert compare(t, ref, got).ok, n_kv
        if _avx2_build():
            assert got == ref, n_kv
        assert not compare(t, ref, run_node(t, srcs, dst_init, n_threads=threads)).ok, "the trap did not show"


# ---------------------------------------------------------------- end to end: a tiny model's program

@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_program_n_kv_gives_the_same_logits(arch: str, tmp_path: Path) -> None:
    """prefill (16 tokens at a time) then decode across the 256-cell boundary, ctx 1024: set_n_kv(n_past +
    n_tokens) per step gives the same logits as set_n_kv(0), bit for bit"""
    from ggc.backends.c.emit import compile_c
    from ggc.capture.llama import LlamaSession, SessionOptions
    from ggc.formats.gguf_file import read_gguf
    from ggc.llm.inputs import InputFiller, Swa
    from ggc.models.quantize import tiny_model
    from ggc.runtime.cprogram import CProgram

    model, ctx, batch = tiny_model(arch, "q8_0"), 1024, 16
    with LlamaSession(model, SessionOptions(n_ctx=ctx, n_batch=batch)) as s:
        graphs = [s.capture(batch, 1)[0], s.capture(1, 1)[0]]
    fa = [t for t in graphs[1].nodes if t.op == "FLASH_ATTN_EXT"]
    assert fa and all(t.src[1].ne[1] == ctx for t in fa), "the graph should span the whole cache"
    n_layer = max(int(t.name[9:]) + 1 for t in graphs[0].leafs if t.name.startswith("cache_k_l"))
    fillers = [InputFiller(g, Swa.from_gguf(read_gguf(model), n_layer)) for g in graphs]
    tokens = [int(v) for v in np.random.default_rng(1).integers(1, 500, 240 + 24)]
    steps = [(0, tokens[i : i + batch]) for i in range(0, 240, batch)] + [(1, [tok]) for tok in tokens[240:]]

    def logits(prog: CProgram, n_kv: Callable[[int, int], int]) -> list[bytes]:
        prog.reset_state()
        out, n_past = [], 0
        for gi, toks in steps:
            g = graphs[gi]
            for tid, data in fillers[gi].values(toks, n_past).items():
                prog.set(g.tensors[tid], data, graph=gi)
            prog.set_n_kv(n_kv(n_past, len(toks)))
            prog.run(graph=gi)
            n_past += len(toks)
            out.append(prog.get(next(t for t in g.outputs() if t.name == "result_output"), graph=gi))
        return out

    compiled = compile_c(graphs, tmp_path / "p", graph_names=["prefill", "decode"])
    with CProgram(compiled) as prog:
        prog.load_weights(model)
        used = logits(prog, lambda n_past, n: n_past + n)
        full = logits(prog, lambda n_past, n: 0)
    assert all(np.isfinite(np.frombuffer(b, np.float32)).all() for b in used)
    assert used == full


def test_program_set_n_kv_reaches_attention(tmp_path: Path) -> None:
    """a decode step with the mask opened over every cell (a trap): set_n_kv rounds up to a multiple of
    256 and attention reads only that many cells, so 11 and 256 agree, 257 (512) and 0 (all) differ"""
    from ggc.backends.c.emit import compile_c
    from ggc.capture.llama import LlamaSession, SessionOptions
    from ggc.llm.inputs import InputFiller, Swa
    from ggc.models.quantize import tiny_model
    from ggc.runtime.cprogram import CProgram

    model = tiny_model("llama", "q8_0")
    with LlamaSession(model, SessionOptions(n_ctx=1024, n_batch=1)) as s:
        g = s.capture(1, 1)[0]
    rng = np.random.default_rng(2)
    with CProgram(compile_c(g, tmp_path / "p")) as prog:
        prog.load_weights(model)
        cache = [t for t in g.leafs if t.name.startswith(("cache_k_l", "cache_v_l"))]
        for t in cache:  # a filled cache, so that every cell weighs in
            prog.set(t, rng.standard_normal(t.nelements).astype(np.float16).tobytes())
        values = InputFiller(g, Swa(0, frozenset())).values([7], 10)
        for tid, data in values.items():
            t = g.tensors[tid]
            prog.set(t, bytes(len(data)) if t.name.endswith("kq_mask") else data)  # mask 0: every cell kept
        out = next(t for t in g.outputs() if t.name == "result_output")

        def run(n_kv: int) -> bytes:
            prog.set_n_kv(n_kv)
            prog.run()
            return prog.get(out)

        r11, r256, r257, r512, r0, r1024 = (run(n) for n in (11, 256, 257, 512, 0, 1024))
    assert r11 == r256 and r257 == r512 and r0 == r1024
    assert len({r256, r512, r0}) == 3
