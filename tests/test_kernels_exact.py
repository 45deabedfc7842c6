"""MUL_MAT and MUL_MAT_ID bit for bit as ggml's CPU backend computes them.

Each case builds one node with the real ggml C API, computes it on ggml's CPU backend (the
installed build: x86-64 AVX2 + FMA + F16C, llamafile sgemm and the tiled K-quant path on), runs
ggc's C kernel on ggml's own source values, and compares the result bytes: they must be
identical, not merely close. The shapes reach every path ggml picks between: its vec_dot
kernels (one src1 row, q4_1 / q5_1, MUL_MAT_ID, or when llamafile declines), llamafile's
tinyBLAS (f32 / f16 / bf16) and tinyBLAS_Q0_AVX (q8_0 / q4_0 / q5_0) from two src1 rows, and
the tiled K-quant kernels from eight; plus the Walsh-Hadamard transform ggml runs for a MUL_MAT
hinted GGML_HINT_SRC0_IS_HADAMARD (llama.cpp's rotation of a quantized KV cache).
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable

import numpy as np
import pytest

from ggc.backends.c.abi import run_node
from ggc.capture.builder import GraphBuilder, Ref
from tests.kernel_check import node_inputs
from tests.test_builder import act, weight

Build = Callable[[GraphBuilder], Ref]
RNG = np.random.default_rng(11)

TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "q4_1", "q5_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"]
BATCHES = [1, 2, 7, 8, 16, 33]
KS = [256, 512]


def _mismatches(build: Build, n_threads: int = 2) -> list[str]:
    """Run every kernel node of the graph in ggml and in ggc; describe the ones whose bytes differ."""
    with GraphBuilder() as b:
        out = build(b)
        graph, live = b.capture_live(out)
        values = b.compute(n_threads)
        leaf = {i: b.data.get(p, bytes(graph.tensors[i].nbytes)) for i, p in enumerate(live.ptrs[: live.n_leafs])}
    bad = []
    ran = 0
    for t in graph.nodes:
        if t.op not in ("MUL_MAT", "MUL_MAT_ID"):
            continue
        ran += 1
        srcs, dst_init = node_inputs(graph, values, leaf, t)
        got = np.frombuffer(run_node(t, srcs, dst_init), np.float32)
        want = np.frombuffer(values[t.id], np.float32)
        diff = got.view(np.uint32) != want.view(np.uint32)
        if diff.any():
            i = int(np.argmax(diff))
            bad.append(f"{t.label()}: {int(diff.sum())}/{diff.size} differ, first [{i}]: ggc {got[i]!r}, "
                       f"ggml {want[i]!r}")
    assert ran, "no MUL_MAT node"
    return bad


def _weight(b: GraphBuilder, tname: str, k: int, m: int, name: str = "w", ne2: int = 1) -> Ref:
    """weight(), and bf16 (random floats truncated to their top 16 bits)."""
    if tname != "bf16":
        return weight(b, tname, k, m, name, ne2)
    x = RNG.standard_normal((ne2, m, k)).astype(np.float32)
    return b.tensor("bf16", (k, m, ne2), name, data=(x.view(np.uint32) >> 16).astype(np.uint16).tobytes())


def _mul_mat(tname: str, k: int, n: int, m: int = 36) -> Build:
    return lambda b: b.op("mul_mat", _weight(b, tname, k, m), act(b, k, n))


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("tname", TYPES)
def test_mul_mat_is_bit_exact(tname: str, n: int, k: int) -> None:
    assert _mismatches(_mul_mat(tname, k, n)) == []


# llamafile's tinyBLAS declines when the rows (m) are not a multiple of 4 or k of 8: vec_dot then
@pytest.mark.parametrize("tname", ["f32", "f16", "bf16", "q8_0", "q4_K"])
@pytest.mark.parametrize("n", [1, 3, 16])
def test_mul_mat_odd_rows_is_bit_exact(tname: str, n: int) -> None:
    assert _mismatches(_mul_mat(tname, 256, n, m=18)) == []


@pytest.mark.parametrize("tname", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("k", [7, 35, 40, 45, 68, 100])  # vec_dot leftovers (k % 32); k % 8: no tinyBLAS
@pytest.mark.parametrize("n", [1, 5])
def test_mul_mat_float_leftovers_are_bit_exact(tname: str, k: int, n: int) -> None:
    assert _mismatches(_mul_mat(tname, k, n, m=12)) == []


def _attention_kq(tname: str, n_q: int, n_kv: int) -> Build:
    """k·q as llama.cpp builds it: a permuted view of the cache times permuted queries, 4 heads over 2 kv heads."""
    def build(b: GraphBuilder) -> Ref:
        cache = _weight(b, tname, 64, 2 * n_kv, name="cache")
        num = b.g.type_num[tname]
        row = b.g.base.ggml_type_size(num) * 64 // b.g.base.ggml_blck_size(num)
        view = b.op("view_3d", cache, 64, 2, n_kv, row, row * 2, 0)
        kk = b.op("permute", view, 0, 2, 1, 3)  # [64, n_kv, 2]
        q = b.op("permute", act(b, 64, 4, n_q, name="q"), 0, 2, 1, 3)  # [64, n_q, 4], not contiguous
        return b.op("mul_mat", kk, q)
    return build


@pytest.mark.parametrize("tname", ["f16", "q8_0", "f32"])
@pytest.mark.parametrize("n_q,n_kv", [(1, 24), (1, 37), (5, 24), (16, 37), (16, 40)])
def test_attention_kq_is_bit_exact(tname: str, n_q: int, n_kv: int) -> None:
    assert _mismatches(_attention_kq(tname, n_q, n_kv)) == []


def _mul_mat_batched(tname: str, n: int) -> Build:
    """src0 broadcast over src1's batches (ne12 = 2 * ne02), each batch a separate sgemm / tiled call."""
    return lambda b: b.op("mul_mat", _weight(b, tname, 256, 8, ne2=2), act(b, 256, n, 4))


@pytest.mark.parametrize("tname", ["f16", "f32", "q8_0", "q4_K", "q6_K"])
@pytest.mark.parametrize("n", [1, 3, 9])
def test_mul_mat_broadcast_is_bit_exact(tname: str, n: int) -> None:
    assert _mismatches(_mul_mat_batched(tname, n)) == []


def _mul_mat_id(tname: str, n_tok: int, n_expert: int = 4, n_used: int = 2, shared: bool = False) -> Build:
    def build(b: GraphBuilder) -> Ref:
        experts = _weight(b, tname, 256, 32, "experts", ne2=n_expert)
        x = act(b, 256, 1 if shared else n_used, n_tok)
        # expert 0 is picked by most tokens (>= 8 rows: the tiled path for K-quants), the others by few
        ids = np.stack([np.concatenate([[0], RNG.permutation(np.arange(1, n_expert))[: n_used - 1]])
                        if t % 4 else RNG.permutation(n_expert)[:n_used] for t in range(n_tok)]).astype(np.int32)
        idt = b.tensor("i32", (n_used, n_tok), "ids", input=True, data=ids)
        return b.op("mul_mat_id", experts, x, idt)
    return build


@pytest.mark.parametrize("tname", ["f16", "f32", "q8_0", "q4_0", "q4_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"])
@pytest.mark.parametrize("n_tok", [1, 3, 12, 33])
def test_mul_mat_id_is_bit_exact(tname: str, n_tok: int) -> None:
    assert _mismatches(_mul_mat_id(tname, n_tok)) == []


@pytest.mark.parametrize("tname", ["q4_K", "q8_0"])
def test_mul_mat_id_shared_src1_is_bit_exact(tname: str) -> None:
    assert _mismatches(_mul_mat_id(tname, 20, shared=True)) == []


# Every path's result for one output element is a fixed sum over k, whatever the thread split
@pytest.mark.parametrize("n_threads", [1, 3, 8])
@pytest.mark.parametrize("build", [_mul_mat("f16", 512, 16), _mul_mat("q8_0", 256, 7), _mul_mat("q4_K", 512, 33),
                                   _mul_mat("q6_K", 256, 16), _mul_mat_id("q4_K", 12), _attention_kq("f16", 16, 40)],
                         ids=["f16", "q8_0", "q4_K", "q6_K", "id_q4_K", "kq_f16"])
def test_results_do_not_depend_on_ggml_threads(build: Build, n_threads: int) -> None:
    assert _mismatches(build, n_threads) == []


def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return (h / np.sqrt(n)).astype(np.float32)


def _rotation(src1_type: str, n: int, rows: int) -> Build:
    """llama.cpp's rotation of a quantized KV cache: a MUL_MAT hinted GGML_HINT_SRC0_IS_HADAMARD,
    which ggml computes as a fast Walsh-Hadamard transform of the src1 rows."""
    def build(b: GraphBuilder) -> Ref:
        rot = b.tensor("f32", (n, n), "rot", data=_hadamard(n).tobytes())
        x = act(b, n, rows, 2)
        if src1_type == "f16":
            x = b.op("cpy", x, b.tensor("f16", (n, rows, 2), "x16"))
        out = b.op("mul_mat", rot, x)
        f = b.g.base.ggml_mul_mat_set_hint
        f.argtypes, f.restype = [C.c_void_p, C.c_int], None
        f(out.ptr, 1)  # GGML_HINT_SRC0_IS_HADAMARD
        return out
    return build


@pytest.mark.parametrize("src1_type", ["f32", "f16"])
@pytest.mark.parametrize("n,rows", [(4, 3), (64, 5), (128, 1), (256, 16)])
def test_hadamard_rotation_is_bit_exact(src1_type: str, n: int, rows: int) -> None:
    assert _mismatches(_rotation(src1_type, n, rows)) == []
