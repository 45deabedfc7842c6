"""C kernels for quantized types, matrix products and row copies, against ggml itself.

Part 1 calls ggml's own per-type functions through ctypes (ggml_get_type_traits for to_float,
ggml_get_type_traits_cpu for from_float and vec_dot) on random data and compares them with
ggc_to_float / ggc_from_float / ggc_vec_dot. Part 2 checks whole nodes (MUL_MAT, MUL_MAT_ID,
GET_ROWS, SET_ROWS, CPY, CONT, DUP) with kernel_check, on ggml's own input values.
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable

import numpy as np
import pytest

from ggc.backends.c.abi import C_TYPES, load_library
from ggc.capture import ggml_lib
from ggc.capture.builder import GraphBuilder, Ref
from tests.kernel_check import assert_ok
from tests.test_builder import act, weight

WEIGHT_TYPES = ["f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"]
VEC_DOT_TYPE = {"f32": "f32", "f16": "f16", "bf16": "bf16", "q4_0": "q8_0", "q5_0": "q8_0", "q8_0": "q8_0",
                "q4_1": "q8_1", "q5_1": "q8_1", **{f"q{k}_K": "q8_K" for k in range(2, 7)}}
FROM_FLOAT_TYPES = ["f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "q8_K"]
RNG = np.random.default_rng(7)


# ---------------------------------------------------------------- ggml's own functions

class TypeTraits(C.Structure):  # struct ggml_type_traits (ggml.h)
    _fields_ = [("type_name", C.c_char_p), ("blck_size", C.c_int64), ("blck_size_interleave", C.c_int64),
                ("type_size", C.c_size_t), ("is_quantized", C.c_bool), ("to_float", C.c_void_p),
                ("from_float_ref", C.c_void_p)]


class TypeTraitsCpu(C.Structure):  # struct ggml_type_traits_cpu (ggml-cpu.h)
    _fields_ = [("from_float", C.c_void_p), ("vec_dot", C.c_void_p), ("vec_dot_type", C.c_int), ("nrows", C.c_int64)]


TO_FLOAT = C.CFUNCTYPE(None, C.c_void_p, C.c_void_p, C.c_int64)
FROM_FLOAT = C.CFUNCTYPE(None, C.c_void_p, C.c_void_p, C.c_int64)
VEC_DOT = C.CFUNCTYPE(None, C.c_int, C.POINTER(C.c_float), C.c_size_t, C.c_void_p, C.c_size_t, C.c_void_p,
                      C.c_size_t, C.c_int)


class Ggml:
    """ggml's per-type row functions for one type name."""

    def __init__(self) -> None:
        self.g = ggml_lib.load()
        self.g.base.ggml_get_type_traits.restype = C.POINTER(TypeTraits)
        self.g.base.ggml_get_type_traits.argtypes = [C.c_int]
        self.g.cpu.ggml_get_type_traits_cpu.restype = C.POINTER(TypeTraitsCpu)
        self.g.cpu.ggml_get_type_traits_cpu.argtypes = [C.c_int]
        self.g.cpu.ggml_cpu_init()  # fills the CPU backend's conversion tables

    def traits(self, name: str) -> tuple[TypeTraits, TypeTraitsCpu]:
        num = self.g.type_num[name]
        t = self.g.base.ggml_get_type_traits(num).contents
        assert t.type_name.decode() == name  # the struct layout is right
        return t, self.g.cpu.ggml_get_type_traits_cpu(num).contents

    def row_size(self, name: str, n: int) -> int:
        t, _ = self.traits(name)
        return t.type_size * n // t.blck_size

    def to_float(self, name: str, data: bytes, n: int) -> np.ndarray:
        if name == "f32":  # ggml has no to_float for f32
            return np.frombuffer(data, np.float32, n).copy()
        out = np.zeros(n, np.float32)
        TO_FLOAT(self.traits(name)[0].to_float)(data, out.ctypes.data, n)
        return out

    def from_float(self, name: str, x: np.ndarray) -> bytes:
        out = C.create_string_buffer(self.row_size(name, x.size))
        FROM_FLOAT(self.traits(name)[1].from_float)(np.ascontiguousarray(x, np.float32).ctypes.data, out, x.size)
        return out.raw

    def vec_dot(self, name: str, n: int, x: bytes, y: bytes) -> float:
        s = C.c_float()
        VEC_DOT(self.traits(name)[1].vec_dot)(n, C.byref(s), 0, x, 0, y, 0, 1)
        return s.value


class Ggc:
    def __init__(self) -> None:
        self.lib = load_library()
        self.lib.ggc_to_float.argtypes = [C.c_int, C.c_char_p, C.c_void_p, C.c_int64]
        self.lib.ggc_from_float.argtypes = [C.c_int, C.c_void_p, C.c_void_p, C.c_int64]
        self.lib.ggc_vec_dot.argtypes = [C.c_int, C.c_int64, C.c_char_p, C.c_char_p]
        self.lib.ggc_vec_dot.restype = C.c_float
        self.lib.ggc_row_size.argtypes = [C.c_int, C.c_int64]
        self.lib.ggc_row_size.restype = C.c_size_t

    def to_float(self, name: str, data: bytes, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        self.lib.ggc_to_float(C_TYPES.index(name), data, out.ctypes.data, n)
        return out

    def from_float(self, name: str, x: np.ndarray) -> bytes:
        out = C.create_string_buffer(self.lib.ggc_row_size(C_TYPES.index(name), x.size))
        self.lib.ggc_from_float(C_TYPES.index(name), np.ascontiguousarray(x, np.float32).ctypes.data, out, x.size)
        return out.raw

    def vec_dot(self, name: str, n: int, x: bytes, y: bytes) -> float:
        return self.lib.ggc_vec_dot(C_TYPES.index(name), n, x, y)


@pytest.fixture(scope="module")
def libs() -> tuple[Ggml, Ggc]:
    return Ggml(), Ggc()


def _floats(n: int) -> np.ndarray:
    """Random rows with block-to-block magnitudes from 1e-2 to 1e2."""
    x = RNG.standard_normal(n).astype(np.float32)
    return (x * 10.0 ** RNG.integers(-2, 3, n // 32).repeat(32)).astype(np.float32)


def _weights(g: Ggml, name: str, n: int) -> bytes:
    x = _floats(n)
    if name == "f32":
        return x.tobytes()
    if name == "f16":
        return x.astype(np.float16).tobytes()
    if name == "bf16":
        return (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    return g.g.quantize(name, x.reshape(-1, 256))


@pytest.mark.parametrize("name", WEIGHT_TYPES)
def test_to_float_is_bit_exact(libs: tuple[Ggml, Ggc], name: str) -> None:
    g, c = libs
    n = 256 * 16
    data = _weights(g, name, n)
    assert np.array_equal(c.to_float(name, data, n).view(np.uint32), g.to_float(name, data, n).view(np.uint32))


def test_f16_to_float_is_exact_for_every_half(libs: tuple[Ggml, Ggc]) -> None:
    _, c = libs
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got, want = c.to_float("f16", halves.tobytes(), halves.size), halves.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("name", FROM_FLOAT_TYPES)
def test_from_float_is_bit_exact(libs: tuple[Ggml, Ggc], name: str) -> None:
    g, c = libs
    x = _floats(256 * 8)
    x[:32] = 0.0  # an all-zero 32-block (an all-zero q8_K block is not compared: ggml leaves its bsums unset)
    # ties: with amax 127, q8 quants are x itself; x.5 must round half to even as ggml-cpu does
    x[32:64] = np.concatenate([[127.0], np.arange(31) - 15.5]).astype(np.float32)
    x[64:96] = np.float32(3.0)  # a constant block: zero range for the affine formats
    got, want = c.from_float(name, x), g.from_float(name, x)
    assert got == want
    if name in ("q8_1", "q8_K"):  # ggml has no to_float for these: check the quants decode to ~x
        back = c.to_float(name, got, x.size)
        assert np.max(np.abs(back - x)) <= np.max(np.abs(x)) / 100


@pytest.mark.parametrize("name", WEIGHT_TYPES)
def test_vec_dot_matches_ggml(libs: tuple[Ggml, Ggc], name: str) -> None:
    g, c = libs
    n, rows = 512, 24
    vt = VEC_DOT_TYPE[name]
    w = _weights(g, name, n * rows)
    rs = g.row_size(name, n)
    worst = 0.0
    for r in range(rows):
        x = w[r * rs : (r + 1) * rs]
        y = g.from_float(vt, _floats(n))
        ref, got = g.vec_dot(name, n, x, y), c.vec_dot(name, n, x, y)
        scale = float(np.abs(g.to_float(name, x, n)) @ np.abs(c.to_float(vt, y, n)))
        worst = max(worst, abs(got - ref) / scale if scale else abs(got - ref))
    assert worst < 2e-6, worst


# ---------------------------------------------------------------- whole nodes

Build = Callable[[GraphBuilder], Ref]


def _ids(b: GraphBuilder, n_expert: int, n_used: int, n_tok: int) -> Ref:
    ids = np.stack([RNG.permutation(n_expert)[:n_used] for _ in range(n_tok)]).astype(np.int32)
    return b.tensor("i32", (n_used, n_tok), "ids", input=True, data=ids)


def _cache(b: GraphBuilder, tname: str, *ne: int, name: str = "cache") -> Ref:
    x = RNG.standard_normal(tuple(reversed(ne))).astype(np.float32)
    data = x.astype(np.float16).tobytes() if tname == "f16" else b.g.quantize(tname, x.reshape(-1, ne[0]))
    return b.tensor(tname, ne, name, data=data)


def _mul_mat(tname: str, batch: int) -> Build:
    return lambda b: b.op("mul_mat", weight(b, tname, 256, 16), act(b, 256, batch))


def _mul_mat_broadcast(b: GraphBuilder) -> Ref:  # GQA-like: 2 kv heads serve 4 query heads
    return b.op("mul_mat", weight(b, "f16", 64, 32, ne2=2), act(b, 64, 5, 4))


def _mul_mat_broadcast_4d(tname: str) -> Build:
    def build(b: GraphBuilder) -> Ref:
        w = _cache(b, tname, 64, 16, 1, 2, name="w")
        return b.op("mul_mat", w, act(b, 64, 3, 2, 4))
    return build


def _mul_mat_kv(tname: str) -> Build:
    """q·k over a permuted view of the first 24 positions of a [64, 4 heads, 40 positions] cache."""
    def build(b: GraphBuilder) -> Ref:
        cache = _cache(b, tname, 64, 4, 40)
        num = b.g.type_num[tname]
        row = b.g.base.ggml_type_size(num) * 64 // b.g.base.ggml_blck_size(num)
        view = b.op("view_3d", cache, 64, 4, 24, row, row * 4, row * 4 * 2)  # skips two positions
        k = b.op("permute", view, 0, 2, 1, 3)  # [64, 24, 4], nb1 > nb2
        q = b.op("permute", act(b, 64, 4, 5, name="q"), 0, 2, 1, 3)  # [64, 5, 4], non-contiguous
        return b.op("mul_mat", k, q)
    return build


def _mul_mat_f16_src1(wtype: str) -> Build:
    """src1 already f16: used in place through its strides (f16 weights), or widened (f32 weights)."""
    def build(b: GraphBuilder) -> Ref:
        x = b.op("permute", _cache(b, "f16", 64, 4, 3, name="x"), 0, 2, 1, 3)
        return b.op("mul_mat", weight(b, wtype, 64, 16), x)
    return build


def _mul_mat_id(tname: str, n_tok: int, shared: bool) -> Build:
    def build(b: GraphBuilder) -> Ref:
        experts = weight(b, tname, 256, 16, "experts", ne2=4)
        x = act(b, 256, 1 if shared else 2, n_tok)
        return b.op("mul_mat_id", experts, x, _ids(b, 4, 2, n_tok))
    return build


def _get_rows(tname: str) -> Build:
    def build(b: GraphBuilder) -> Ref:
        rows = b.tensor("i32", (4,), "rows", input=True, data=np.array([3, 0, 7, 3], np.int32))
        return b.op("get_rows", weight(b, tname, 256, 8), rows)
    return build


def _get_rows_3d(b: GraphBuilder) -> Ref:
    rows = b.tensor("i32", (3, 2), "rows", input=True, data=np.array([[1, 5, 2], [7, 7, 0]], np.int32))
    return b.op("get_rows", weight(b, "f16", 64, 8, ne2=2), rows)


def _set_rows(tname: str, itype: str) -> Build:
    def build(b: GraphBuilder) -> Ref:
        cache = _cache(b, tname, 64, 16)
        rows = np.array([5, 1, 9], np.int64 if itype == "i64" else np.int32)
        idx = b.tensor(itype, (3,), "idx", input=True, data=rows)
        return b.op("set_rows", cache, act(b, 64, 3), idx)
    return build


def _set_rows_broadcast(b: GraphBuilder) -> Ref:
    """3-d rows [64, 3, 2] with one index list shared by both batches (idx ne1 == 1)."""
    cache = _cache(b, "f16", 64, 16, 2)
    idx = b.tensor("i64", (3, 1), "idx", input=True, data=np.array([[4, 0, 15]], np.int64))
    return b.op("set_rows", cache, act(b, 64, 3, 2), idx)


def _cpy(src: Build, dtype: str, *ne: int) -> Build:
    return lambda b: b.op("cpy", src(b), b.tensor(dtype, ne, "dst"))


def _cpy_into_transposed_cache(b: GraphBuilder) -> Ref:
    """The old V-cache write: 3 tokens x 8 dims, transposed, into columns 5..7 of a [16, 8] f16 cache."""
    cache = _cache(b, "f16", 16, 8)
    dst = b.op("view_2d", cache, 3, 8, 32, 10)
    return b.op("cpy", b.op("transpose", act(b, 8, 3)), dst)


NODES: dict[str, Build] = {
    **{f"mul_mat_{t}_b{n}": _mul_mat(t, n) for t in WEIGHT_TYPES for n in (1, 8)},
    "mul_mat_broadcast_gqa": _mul_mat_broadcast,
    "mul_mat_broadcast_4d_f16": _mul_mat_broadcast_4d("f16"),
    "mul_mat_broadcast_4d_q8_0": _mul_mat_broadcast_4d("q8_0"),
    "mul_mat_kv_view_f16": _mul_mat_kv("f16"),
    "mul_mat_kv_view_q8_0": _mul_mat_kv("q8_0"),
    "mul_mat_f16_src1_in_place": _mul_mat_f16_src1("f16"),
    "mul_mat_f16_src1_widened": _mul_mat_f16_src1("f32"),
    **{f"mul_mat_id_{t}_t{n}": _mul_mat_id(t, n, False) for t in ("f16", "q4_0", "q8_0", "q4_K", "q6_K")
       for n in (1, 8)},
    "mul_mat_id_shared_src1_q4_0": _mul_mat_id("q4_0", 8, True),
    "mul_mat_id_shared_src1_q4_K_t1": _mul_mat_id("q4_K", 1, True),
    **{f"get_rows_{t}": _get_rows(t) for t in ("f32", "f16", "bf16", "q4_0", "q8_0", "q4_K", "q5_K", "q6_K")},
    "get_rows_3d": _get_rows_3d,
    **{f"set_rows_{t}_{i}": _set_rows(t, i) for t in ("f16", "q8_0") for i in ("i64", "i32")},
    "set_rows_q4_0": _set_rows("q4_0", "i64"),
    "set_rows_broadcast": _set_rows_broadcast,
    "cpy_f32_f16": _cpy(lambda b: act(b, 64, 3), "f16", 64, 3),
    "cpy_f16_f32": _cpy(lambda b: _cache(b, "f16", 64, 3, name="x"), "f32", 64, 3),
    "cpy_f32_q8_0": _cpy(lambda b: act(b, 64, 3), "q8_0", 64, 3),
    "cpy_f32_q4_0": _cpy(lambda b: act(b, 64, 3), "q4_0", 64, 3),
    "cpy_q8_0_f32": _cpy(lambda b: _cache(b, "q8_0", 64, 3, name="x"), "f32", 64, 3),
    "cpy_permuted_f32_f16": _cpy(lambda b: b.op("permute", act(b, 16, 4, 3), 0, 2, 1, 3), "f16", 16, 3, 4),
    "cpy_permuted_f32_q8_0": _cpy(lambda b: b.op("permute", act(b, 32, 4, 3), 0, 2, 1, 3), "q8_0", 32, 3, 4),
    "cpy_reshaped_f32_f16": _cpy(lambda b: b.op("transpose", act(b, 6, 4)), "f16", 8, 3),
    "cpy_into_transposed_cache": _cpy_into_transposed_cache,
    "cont_transposed": lambda b: b.op("cont", b.op("transpose", act(b, 16, 5))),
    "cont_permuted_f16": lambda b: b.op("cont", b.op("permute", _cache(b, "f16", 8, 3, 4), 1, 2, 0, 3)),
    "cont_permuted_q8_0": lambda b: b.op("cont", b.op("permute", _cache(b, "q8_0", 32, 3, 4), 0, 2, 1, 3)),
    "dup_permuted": lambda b: b.op("dup", b.op("permute", act(b, 16, 4, 3), 0, 2, 1, 3)),
}


@pytest.mark.parametrize("name", list(NODES))
def test_node_matches_ggml(name: str) -> None:
    assert_ok(NODES[name])
