"""CUDA kernels for matrix products and row copies, node by node against ggml.

MUL_MAT over all 13 weight types at batch 1, 2, 8 (matrix-vector kernels) and 64 / 100 / 130
(tensor-core tiles of 32, 64 and 128 rows), K-cache-like permuted views, GQA / 4-d broadcast,
MUL_MAT_ID (per pair, grouped matrix-vector and grouped tensor-core paths), GET_ROWS, SET_ROWS, CPY, CONT, DUP.

Without a GPU these skip ("no CUDA GPU: ..."); test_library_builds needs only nvcc (CI runs it).
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable

import numpy as np
import pytest

from ggc.backends.cuda import abi as cuda
from ggc.capture.builder import GraphBuilder, Ref
from tests.cuda_check import assert_ok
from tests.test_builder import act, weight

WEIGHT_TYPES = ["f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"]
RNG = np.random.default_rng(11)

Build = Callable[[GraphBuilder], Ref]


# ---------------------------------------------------------------- the one test CI runs (no GPU needed)

EXPORTS = ["ggc_cuda_op_mul_mat", "ggc_cuda_work_mul_mat", "ggc_cuda_op_mul_mat_id", "ggc_cuda_work_mul_mat_id",
           "ggc_cuda_op_get_rows", "ggc_cuda_op_set_rows", "ggc_cuda_op_cpy", "ggc_cuda_op_cont", "ggc_cuda_op_dup",
           "ggc_cuda_run_node", "ggc_cuda_device_count"]


def test_library_builds() -> None:
    """nvcc compiles every kernels/*.cu into one shared library that exports the kernels."""
    if cuda.find_nvcc() is None:
        pytest.skip("nvcc not found (install the CUDA toolkit or set NVCC)")
    path = cuda.build_library()
    lib = C.CDLL(str(path))  # loads without a GPU: the CUDA runtime is linked statically
    missing = [name for name in EXPORTS if not hasattr(lib, name)]
    assert not missing, missing
    assert lib.ggc_cuda_device_count() >= 0


# ---------------------------------------------------------------- builders

def _ids(b: GraphBuilder, n_expert: int, n_used: int, n_tok: int) -> Ref:
    ids = np.stack([RNG.permutation(n_expert)[:n_used] for _ in range(n_tok)]).astype(np.int32)
    return b.tensor("i32", (n_used, n_tok), "ids", input=True, data=ids)


def _cache(b: GraphBuilder, tname: str, *ne: int, name: str = "cache") -> Ref:
    x = RNG.standard_normal(tuple(reversed(ne))).astype(np.float32)
    if tname == "f32":
        data = x.tobytes()
    elif tname == "f16":
        data = x.astype(np.float16).tobytes()
    else:
        data = b.g.quantize(tname, x.reshape(-1, ne[0]))
    return b.tensor(tname, ne, name, data=data)


def _mul_mat(tname: str, batch: int, k: int = 1280, n: int = 160) -> Build:
    """k = 1280: one full 1024-element chunk and a partial one; n = 160: a partial 128-row tile."""
    return lambda b: b.op("mul_mat", weight(b, tname, k, n), act(b, k, batch))


def _mul_mat_gqa(tname: str, n_tok: int, n_q: int = 8, n_kv: int = 2) -> Build:
    """n_q query heads over n_kv weight matrices (r2 = n_q / n_kv)."""
    return lambda b: b.op("mul_mat", _cache(b, tname, 256, 40, n_kv, name="w"), act(b, 256, n_tok, n_q))


def _mul_mat_broadcast_4d(tname: str, n_tok: int) -> Build:
    def build(b: GraphBuilder) -> Ref:
        w = _cache(b, tname, 64, 16, 1, 2, name="w")
        return b.op("mul_mat", w, act(b, 64, n_tok, 2, 4))
    return build


def _mul_mat_kv(tname: str, n_q: int, head: int = 64) -> Build:
    """q·k over a permuted view of 24 of the 40 positions of a [head, 4 heads, 40 positions] cache."""
    def build(b: GraphBuilder) -> Ref:
        cache = _cache(b, tname, head, 4, 40)
        num = b.g.type_num[tname]
        row = b.g.base.ggml_type_size(num) * head // b.g.base.ggml_blck_size(num)
        view = b.op("view_3d", cache, head, 4, 24, row, row * 4, row * 4 * 2)  # skips two positions
        k = b.op("permute", view, 0, 2, 1, 3)  # [head, 24, 4], nb1 > nb2
        q = b.op("permute", act(b, head, 4, n_q, name="q"), 0, 2, 1, 3)  # [head, n_q, 4], non-contiguous
        return b.op("mul_mat", k, q)
    return build


def _mul_mat_kq_gqa(n_q: int) -> Build:
    """attention scores without flash attention: K cache [128, 4 kv heads, 48 cells] viewed as
    [128, 48, 4], q as [128, n_q, 8 heads]; two query heads per kv head."""
    def build(b: GraphBuilder) -> Ref:
        cache = _cache(b, "f16", 128, 4, 48)
        k = b.op("permute", cache, 0, 2, 1, 3)
        q = b.op("permute", act(b, 128, 8, n_q, name="q"), 0, 2, 1, 3)
        return b.op("mul_mat", k, q)
    return build


def _mul_mat_kqv(n_q: int) -> Build:
    """V^T·softmax without flash attention: V cache transposed view [n_kv, head, heads]."""
    def build(b: GraphBuilder) -> Ref:
        v = b.op("cont", b.op("transpose", _cache(b, "f16", 64, 40, 2, name="v")))  # [40, 64, 2] f16
        kq = act(b, 40, n_q, 4, name="kq")
        return b.op("mul_mat", v, kq)
    return build


def _mul_mat_f16_src1(wtype: str, n: int) -> Build:
    def build(b: GraphBuilder) -> Ref:
        x = b.op("permute", _cache(b, "f16", 64, 4, n, name="x"), 0, 2, 1, 3)
        return b.op("mul_mat", weight(b, wtype, 64, 16), x)
    return build


def _mul_mat_id(tname: str, n_tok: int, shared: bool, n_expert: int = 4, n_used: int = 2) -> Build:
    def build(b: GraphBuilder) -> Ref:
        experts = weight(b, tname, 256, 160, "experts", ne2=n_expert)
        x = act(b, 256, 1 if shared else n_used, n_tok)
        return b.op("mul_mat_id", experts, x, _ids(b, n_expert, n_used, n_tok))
    return build


def _get_rows(tname: str) -> Build:
    def build(b: GraphBuilder) -> Ref:
        rows = b.tensor("i32", (5,), "rows", input=True, data=np.array([3, 0, 7, 3, 5], np.int32))
        return b.op("get_rows", weight(b, tname, 512, 8), rows)
    return build


def _get_rows_3d(tname: str) -> Build:
    def build(b: GraphBuilder) -> Ref:
        rows = b.tensor("i32", (3, 2), "rows", input=True, data=np.array([[1, 5, 2], [7, 7, 0]], np.int32))
        return b.op("get_rows", weight(b, tname, 256, 8, ne2=2), rows)
    return build


def _set_rows(tname: str, itype: str, n: int = 3) -> Build:
    def build(b: GraphBuilder) -> Ref:
        cache = _cache(b, tname, 128, 16)
        rows = RNG.permutation(16)[:n].astype(np.int64 if itype == "i64" else np.int32)
        idx = b.tensor(itype, (n,), "idx", input=True, data=rows)
        return b.op("set_rows", cache, act(b, 128, n), idx)
    return build


def _set_rows_broadcast(tname: str) -> Build:
    """3-d rows [64, 3, 2] with one index list shared by both batches (idx ne1 == 1)."""
    def build(b: GraphBuilder) -> Ref:
        cache = _cache(b, tname, 64, 16, 2)
        idx = b.tensor("i64", (3, 1), "idx", input=True, data=np.array([[4, 0, 15]], np.int64))
        return b.op("set_rows", cache, act(b, 64, 3, 2), idx)
    return build


def _cpy(src: Build, dtype: str, *ne: int) -> Build:
    return lambda b: b.op("cpy", src(b), b.tensor(dtype, ne, "dst"))


def _cpy_into_transposed_cache(b: GraphBuilder) -> Ref:
    """The old V-cache write: 3 tokens x 8 dims, transposed, into columns 5..7 of a [16, 8] f16 cache."""
    cache = _cache(b, "f16", 16, 8)
    dst = b.op("view_2d", cache, 3, 8, 32, 10)
    return b.op("cpy", b.op("transpose", act(b, 8, 3)), dst)


def _f16(b: GraphBuilder, *ne: int) -> Ref:
    return _cache(b, "f16", *ne, name="x")


NODES: dict[str, Build] = {
    **{f"mul_mat_{t}_b{n}": _mul_mat(t, n) for t in WEIGHT_TYPES for n in (1, 2, 8, 64)},
    **{f"mul_mat_{t}_b{n}": _mul_mat(t, n) for t in ("f16", "q4_0", "q4_K", "q6_K") for n in (3, 9, 100, 130)},
    **{f"mul_mat_{t}_odd_k_b{n}": _mul_mat(t, n, k=72, n=20) for t in ("f32", "f16", "bf16") for n in (1, 5, 33)},
    **{f"mul_mat_{t}_b{n}": _mul_mat(t, n) for t in ("q5_0", "q8_0") for n in (9, 130)},
    # tensor-core paths with split-K: 40 columns of 160 rows are few enough tiles for two K slices;
    # k = 2144 ends in a partial 64-element tile of ggc_k_mmq4 (q4_0: one block of two)
    **{f"mul_mat_{t}_long_k_b40": _mul_mat(t, 40, k=2144) for t in ("q4_0", "q5_0", "q8_0")},
    "mul_mat_q8_0_long_k_b1": _mul_mat("q8_0", 1, k=4096 + 512, n=64),
    "mul_mat_q4_K_long_k_b4": _mul_mat("q4_K", 4, k=4096 + 256, n=64),
    **{f"mul_mat_gqa_{t}_t{n}": _mul_mat_gqa(t, n) for t in ("f16", "q8_0", "q4_0") for n in (1, 2, 3, 16)},
    **{f"mul_mat_broadcast_4d_{t}_t{n}": _mul_mat_broadcast_4d(t, n) for t in ("f16", "q8_0") for n in (1, 3, 20)},
    **{f"mul_mat_kv_view_{t}_q{n}": _mul_mat_kv(t, n) for t in ("f16", "q8_0", "f32") for n in (1, 5, 40)},
    **{f"mul_mat_kq_gqa_q{n}": _mul_mat_kq_gqa(n) for n in (1, 4, 17)},
    **{f"mul_mat_kqv_q{n}": _mul_mat_kqv(n) for n in (1, 12)},
    **{f"mul_mat_f16_src1_{w}_n{n}": _mul_mat_f16_src1(w, n) for w in ("f16", "f32") for n in (3, 20)},
    **{f"mul_mat_id_{t}_t{n}": _mul_mat_id(t, n, False) for t in ("f16", "bf16", "q4_0", "q8_0", "q4_K", "q6_K")
       for n in (1, 8, 40)},
    "mul_mat_id_shared_src1_q4_0_t40": _mul_mat_id("q4_0", 40, True),
    "mul_mat_id_shared_src1_q4_K_t1": _mul_mat_id("q4_K", 1, True),
    "mul_mat_id_many_experts_q5_K_t64": _mul_mat_id("q5_K", 64, False, n_expert=16, n_used=4),
    "mul_mat_id_many_experts_q2_K_t3": _mul_mat_id("q2_K", 3, False, n_expert=16, n_used=4),
    # more than 8 tokens, at most 8 pairs per expert on average: grouped matrix-vector tiles
    **{f"mul_mat_id_sparse_{t}_t{n}": _mul_mat_id(t, n, False, n_expert=16, n_used=2)
       for t in ("f16", "q4_0", "q4_K", "q6_K") for n in (9, 20)},
    "mul_mat_id_sparse_shared_src1_q8_0_t20": _mul_mat_id("q8_0", 20, True, n_expert=16, n_used=2),
    **{f"get_rows_{t}": _get_rows(t) for t in WEIGHT_TYPES},
    **{f"get_rows_3d_{t}": _get_rows_3d(t) for t in ("f16", "q4_K")},
    **{f"set_rows_{t}_{i}": _set_rows(t, i) for t in ("f16", "q8_0") for i in ("i64", "i32")},
    **{f"set_rows_{t}": _set_rows(t, "i64") for t in ("f32", "q4_0", "q4_1", "q5_0", "q5_1")},
    "set_rows_f16_many": _set_rows("f16", "i64", n=16),
    **{f"set_rows_broadcast_{t}": _set_rows_broadcast(t) for t in ("f16", "q8_0")},
    **{f"cpy_f32_{t}": _cpy(lambda b: act(b, 64, 3), t, 64, 3)
       for t in ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")},
    "cpy_f16_f32": _cpy(lambda b: _f16(b, 64, 3), "f32", 64, 3),
    "cpy_f16_f16_permuted": _cpy(lambda b: b.op("permute", _f16(b, 16, 4, 3), 0, 2, 1, 3), "f16", 16, 3, 4),
    **{f"cpy_{t}_f32": _cpy(lambda b, t=t: _cache(b, t, 256, 3, name="x"), "f32", 256, 3)
       for t in ("q8_0", "q4_0", "q4_K", "q6_K")},
    "cpy_permuted_f32_f16": _cpy(lambda b: b.op("permute", act(b, 16, 4, 3), 0, 2, 1, 3), "f16", 16, 3, 4),
    "cpy_permuted_f32_q8_0": _cpy(lambda b: b.op("permute", act(b, 32, 4, 3), 0, 2, 1, 3), "q8_0", 32, 3, 4),
    "cpy_reshaped_f32_f16": _cpy(lambda b: b.op("transpose", act(b, 6, 4)), "f16", 8, 3),
    "cpy_into_transposed_cache": _cpy_into_transposed_cache,
    "cont_transposed": lambda b: b.op("cont", b.op("transpose", act(b, 16, 5))),
    "cont_permuted_f16": lambda b: b.op("cont", b.op("permute", _f16(b, 8, 3, 4), 1, 2, 0, 3)),
    "cont_permuted_q8_0": lambda b: b.op("cont", b.op("permute", _cache(b, "q8_0", 32, 3, 4), 0, 2, 1, 3)),
    "cont_contiguous_f32": lambda b: b.op("cont", b.op("reshape_2d", act(b, 16, 6), 32, 3)),
    "dup_permuted": lambda b: b.op("dup", b.op("permute", act(b, 16, 4, 3), 0, 2, 1, 3)),
}

OPS = ("MUL_MAT", "MUL_MAT_ID", "GET_ROWS", "SET_ROWS", "CPY", "CONT", "DUP")


@pytest.mark.parametrize("name", list(NODES))
def test_node_matches_ggml(name: str) -> None:
    results = assert_ok(NODES[name], OPS)
    print(name, " ".join(f"{r.tensor.op}:{r.nmse:.1e}" for r in results))


@pytest.mark.parametrize(("t", "k"), [("q4_0", 1280), ("q8_0", 4608), ("q4_K", 1280), ("q6_K", 4608)])
def test_one_column_product_with_fewer_blocks_than_groups(t: str, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """ggc_k_gemv1 on a grid smaller than its row groups (GGC_GEMV1_BLOCKS=3, as on a 7B product where the
    device holds fewer blocks than groups): each block covers several groups, loading the next group's
    weights before it dots the current one (k = 4608: a thread's several sub-blocks a row, then the next
    group's first)."""
    monkeypatch.setenv("GGC_GEMV1_BLOCKS", "3")
    assert_ok(_mul_mat(t, 1, k=k), OPS)


@pytest.mark.parametrize("cols", [1, 4, 40, 130])
def test_regrouped_q4_0_product_matches_ggml(cols: int) -> None:
    """q4_0 weights as GPU programs keep them (GGC_TYPE_Q4_0R8, whole 8-block groups a row: k = 1280):
    the one-column kernel (1), the few-column one (4), and the q4_0 tensor-core kernel, whose quants
    and scales then come by cp.async (40: split-K over two slices; 130: 128-row tiles and a partial one)."""
    assert_ok(_mul_mat("q4_0", cols), OPS, regroup=True)



@pytest.mark.parametrize(("k", "env"), [(2048, {}), (6144, {}), (6144, {"GGC_GEMV1_BLOCKS": "3"}),
                                         (2048, {"GGC_GEMV1_NT": "128"})],
                         ids=["2048", "6144", "6144-3blocks", "2048-nt128"])
def test_regrouped_q6_k_one_column_product_matches_ggml(k: int, env: dict[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """q6_K weights as GPU programs keep them for one-column products (GGC_TYPE_Q6_KR8: rows of whole
    2048-element groups, a sub-block's quants in aligned 16-byte loads): one group a row in 64-thread
    blocks (and in 128-thread ones), three a row (a thread's several sub-blocks), and a grid smaller
    than the row groups"""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert_ok(_mul_mat("q6_K", 1, k=k), OPS, regroup=True)


@pytest.mark.parametrize("t", ["q4_0", "q6_K"])
def test_one_column_product_in_128_thread_blocks(t: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """rows of at most 2048 elements run ggc_k_gemv1 in 64-thread blocks; GGC_GEMV1_NT=128 keeps the
    128-thread block (a thread of two without an item), which must match ggml as well"""
    monkeypatch.setenv("GGC_GEMV1_NT", "128")
    assert_ok(_mul_mat(t, 1), OPS, regroup=t == "q4_0")


@pytest.mark.parametrize("quant", ["q8_0", "q4_0", "q4_k_m"])
def test_q_k_v_launch_stores_q_and_k_roped(quant: str) -> None:
    """Llama's decode step with Q's and K's ROPE in the Q/K/V launch (rope_epilogues: the one-column
    kernels rotate each row pair as they store it, K into its cache rows): every group of the generated
    program within ggml's limits, the fused group included (ggc_k_gemv1: q8_0, the regrouped q4_0, and
    q4_K with q6_K)."""
    from ggc.backends.cuda.emit import CUDA_FUSION
    from ggc.compiler.passes import live_nodes, make_groups
    from ggc.models.quantize import tiny_model
    from ggc.oracle.verify import verify_model
    from tests.cuda_check import require_gpu

    require_gpu()
    res = verify_model(tiny_model("llama", quant), 1, target="cuda")
    groups = make_groups(res.graph, live_nodes(res.graph), CUDA_FUSION)
    assert any(g.nodes[0].op == "MUL_MAT" and "ROPE" in [t.op for t in g.nodes] for g in groups)
    bad = [(r.tensor.label(), r.nmse) for r in res.results if not r.ok]
    assert not bad, bad
