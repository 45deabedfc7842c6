"""C kernels for elementwise, norm, rope, softmax and attention ops, node by node against ggml.

Every case builds a graph with the real ggml C API and checks each kernel on ggml's own inputs
(tests.kernel_check: test-backend-ops' NMSE thresholds). Ops the builder's SIGNATURES table lacks
are called here through `call` with their ctypes argument codes. On the AVX2 + FMA build of ggml
that llama-cpp-python compiles on x86-64, the kernels are bit-exact; test_bit_exact checks that.
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable

import numpy as np
import pytest

from ggc.capture.builder import GraphBuilder, Ref
from ggc.ir.types import TYPES
from tests.kernel_check import assert_ok, check

RNG = np.random.default_rng(2024)
Build = Callable[[GraphBuilder], Ref]

_CODES = {"t": C.c_void_p, "i": C.c_int, "l": C.c_int64, "z": C.c_size_t, "f": C.c_float, "b": C.c_bool}


def call(b: GraphBuilder, fn: str, sig: str, *args: object, ctx: bool = True, returns: bool = True) -> Ref:
    """ggml_<fn>(ctx, *args) with argument codes as builder.SIGNATURES. ctx=False: a function on a
    tensor without the context (ggml_rope_set_offset); returns=False: a setter that returns nothing
    (ggml_soft_max_add_sinks), and args[0] comes back."""
    f = getattr(b.g.base, "ggml_" + fn)
    f.restype = C.c_void_p if returns else None
    f.argtypes = ([C.c_void_p] if ctx else []) + [_CODES[c] for c in sig]
    cargs = [a.ptr if isinstance(a, Ref) else a for a in args]
    p = f(*([b.ctx] if ctx else []), *cargs)
    if not returns:
        return args[0]  # type: ignore[return-value]
    assert p, f"ggml_{fn} returned NULL"
    return Ref(p)


def x(b: GraphBuilder, *ne: int, name: str = "x", scale: float = 1.0, ties: bool = False, offset: float = 0.0) -> Ref:
    v = RNG.standard_normal(tuple(reversed(ne))) * scale + offset
    if ties:
        v = np.round(v * 2.0)  # many equal values
    return b.tensor("f32", ne, name, input=True, data=v.astype(np.float32))


def h(b: GraphBuilder, *ne: int, name: str = "h", scale: float = 1.0) -> Ref:
    v = RNG.standard_normal(tuple(reversed(ne))) * scale
    return b.tensor("f16", ne, name, input=True, data=v.astype(np.float16))


def permuted(b: GraphBuilder, *ne: int, name: str = "x") -> Ref:
    """a non-contiguous view of shape ne: memory laid out as (ne0, ne2, ne1), dims 1 and 2 swapped"""
    return call(b, "permute", "tiiii", x(b, ne[0], ne[2], ne[1], name=name), 0, 2, 1, 3)


def _avx2_build() -> bool:
    """the ggml CPU build whose vector code the kernels reproduce (8-lane float sums, FMA)"""
    from ggc.capture.ggml_lib import load

    cpu = load().cpu
    has = {n: getattr(cpu, "ggml_cpu_has_" + n)() for n in ("avx2", "fma", "f16c", "avx512")}
    return bool(has["avx2"] and has["fma"] and has["f16c"] and not has["avx512"])


# ---------------------------------------------------------------- binary ops, add_id, scale, clamp, sums

BINARY_SHAPES = {
    "same": ((64, 8), (64, 8)),
    "row": ((128, 8, 3), (128, 1, 1)),
    "batch8": ((32, 5, 8), (32, 5, 1)),
    "dim0_repeat": ((256, 4, 2, 2), (64, 4, 1, 2)),
    "col": ((48, 6), (1, 6)),
}


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("shape", list(BINARY_SHAPES))
def test_binary_broadcast(op: str, shape: str) -> None:
    a, c = BINARY_SHAPES[shape]
    assert_ok(lambda b: call(b, op, "tt", x(b, *a), x(b, *c, name="y", offset=3.0 if op == "div" else 0.0)))


def test_binary_strided_and_f16() -> None:
    assert_ok(lambda b: call(b, "add", "tt", permuted(b, 64, 4, 3), x(b, 64, 4, 1, name="y")))
    assert_ok(lambda b: call(b, "mul", "tt", x(b, 32, 16), call(b, "transpose", "t", x(b, 16, 32, name="y"))))
    assert_ok(lambda b: call(b, "add", "tt", h(b, 64, 4), x(b, 64, 1, name="y")))
    assert_ok(lambda b: call(b, "mul", "tt", h(b, 64, 4), h(b, 64, 4, name="y")))


@pytest.mark.parametrize("tname", ["q8_0", "q4_0", "q5_1"])
def test_add_quantized_src0(tname: str) -> None:
    """dequantize, add, quantize back (K-quants would need ggc_from_float for them: not there)"""
    from tests.test_builder import weight

    assert_ok(lambda b: call(b, "add", "tt", weight(b, tname, 256, 6), x(b, 256, 6)))


def test_add_id() -> None:
    def build(b: GraphBuilder) -> Ref:
        ids = b.tensor("i32", (2, 3), "ids", input=True, data=np.array([[0, 3], [1, 2], [3, 3]], np.int32))
        return call(b, "add_id", "ttt", x(b, 64, 2, 3), x(b, 64, 4, name="bias"), ids)

    assert_ok(build)


def test_scale_clamp_sum_rows() -> None:
    assert_ok(lambda b: call(b, "scale", "tf", x(b, 256, 8), 0.37))
    assert_ok(lambda b: call(b, "scale_bias", "tff", x(b, 100, 8), 0.37, -1.5))
    assert_ok(lambda b: call(b, "clamp", "tff", x(b, 64, 8, 2), -0.5, 0.7))
    assert_ok(lambda b: call(b, "clamp", "tff", h(b, 64, 8), -0.5, 0.7))
    assert_ok(lambda b: call(b, "sum_rows", "t", x(b, 256, 8, 2)))
    assert_ok(lambda b: call(b, "sum_rows", "t", permuted(b, 48, 3, 5)))


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
def test_concat(dim: int) -> None:
    ne_a, ne_b = [16, 3, 2, 2], [16, 3, 2, 2]
    ne_b[dim] = 5
    assert_ok(lambda b: call(b, "concat", "tti", x(b, *ne_a), x(b, *ne_b, name="y"), dim))
    assert_ok(lambda b: call(b, "concat", "tti", h(b, *ne_a), h(b, *ne_b, name="y"), dim))


@pytest.mark.parametrize("n", [7, 16, 17, 100, 256])
def test_argsort_and_top_k_with_ties(n: int) -> None:
    """ties come out in ggml's order (libstdc++'s sort and partial_sort)"""
    for order in (0, 1):
        assert_ok(lambda b, order=order: call(b, "argsort", "ti", x(b, n, 6, ties=True), order))
    for k in {1, 2, 5, n // 2 + 1}:
        assert_ok(lambda b, k=k: call(b, "top_k", "ti", x(b, n, 6, ties=True), k))
    assert_ok(lambda b: call(b, "argsort", "ti", x(b, n, 3), 1))


# ---------------------------------------------------------------- unary and glu

UNARY = ["abs", "sgn", "neg", "step", "tanh", "elu", "relu", "sigmoid", "gelu", "gelu_quick", "gelu_erf", "silu",
         "hardswish", "hardsigmoid", "exp", "expm1", "softplus", "floor", "ceil", "round", "trunc"]


@pytest.mark.parametrize("op", UNARY)
def test_unary(op: str) -> None:
    # 67 columns: full groups of 8 and a tail (silu's vector exp); scale 4 reaches GELU's +-10 cutoff
    assert_ok(lambda b: call(b, op, "t", x(b, 67, 5, 2, scale=4.0)))
    assert_ok(lambda b: call(b, op, "t", x(b, 256, 8)))
    assert_ok(lambda b: call(b, op, "t", h(b, 64, 5, scale=4.0)))
    assert_ok(lambda b: call(b, op, "t", permuted(b, 40, 3, 4)))


def test_unary_xielu() -> None:
    assert_ok(lambda b: call(b, "xielu", "tffff", x(b, 67, 5, scale=3.0), 0.8, 0.8, 0.5, -1e-6))


GLU = ["reglu", "geglu", "swiglu", "geglu_erf", "geglu_quick"]


@pytest.mark.parametrize("op", GLU)
def test_glu(op: str) -> None:
    assert_ok(lambda b: call(b, op, "t", x(b, 134, 5, scale=4.0)))              # halves of one row
    assert_ok(lambda b: call(b, op + "_swapped", "t", x(b, 256, 8, scale=4.0)))  # op_params[1] = swapped
    assert_ok(lambda b: call(b, op + "_split", "tt", x(b, 67, 5, 2, scale=4.0), x(b, 67, 5, 2, name="g")))
    assert_ok(lambda b: call(b, op, "t", h(b, 64, 5, scale=4.0)))


def test_glu_with_params() -> None:
    """swiglu_oai: alpha, limit (op_params 2, 3); swiglu_clamp: limit"""
    assert_ok(lambda b: call(b, "swiglu_oai", "ttff", x(b, 67, 5, scale=4.0), x(b, 67, 5, name="g", scale=4), 1.7, 7.0))
    assert_ok(lambda b: call(b, "swiglu_clamp", "ttf", x(b, 67, 5, scale=4.0), x(b, 67, 5, name="g", scale=4.0), 3.0))
    assert_ok(lambda b: call(b, "swiglu_clamp", "ttf", h(b, 64, 5, scale=4.0), h(b, 64, 5, name="g", scale=4.0), 3.0))


# ---------------------------------------------------------------- norms

@pytest.mark.parametrize("ne0", [32, 37, 256, 4096])
def test_norms(ne0: int) -> None:
    assert_ok(lambda b: call(b, "norm", "tf", x(b, ne0, 5, 2, offset=3.0), 1e-5))
    assert_ok(lambda b: call(b, "rms_norm", "tf", x(b, ne0, 8), 1e-6))
    assert_ok(lambda b: call(b, "l2_norm", "tf", x(b, ne0, 5, 2), 1e-6))


def test_norms_strided() -> None:
    assert_ok(lambda b: call(b, "rms_norm", "tf", permuted(b, 128, 4, 3), 1e-6))
    assert_ok(lambda b: call(b, "norm", "tf", call(b, "transpose", "t", x(b, 64, 48)), 1e-5))
    assert_ok(lambda b: call(b, "l2_norm", "tf", call(b, "transpose", "t", x(b, 64, 48)), 1e-6))


# ---------------------------------------------------------------- rope

def _rope(mode: int, *, ff: bool = False, ext: float = 0.0, freq_scale: float = 1.0, n_dims: int = 64, ne0: int = 64,
          tname: str = "f32", n_tok: int = 5, n_offs: int = 0) -> Build:
    def build(b: GraphBuilder) -> Ref:
        src = x(b, ne0, 4, n_tok, 2) if tname == "f32" else h(b, ne0, 4, n_tok, 2)
        pos = b.tensor("i32", (n_tok,), "pos", input=True, data=RNG.integers(0, 5000, n_tok).astype(np.int32))
        factors = None
        if ff:
            f = (1 + 3 * RNG.random(n_dims // 2)).astype(np.float32)
            factors = b.tensor("f32", (n_dims // 2,), "ff", input=True, data=f)
        r = b.op("rope_ext", src, pos, factors, n_dims, mode, 4096, 10000.0, freq_scale, ext, 1.0, 32.0, 1.0)
        return call(b, "rope_set_offset", "ti", r, n_offs, ctx=False) if n_offs else r

    return build


ROPES = {
    "plain": {},
    "freq_factors": {"ff": True},
    "yarn": {"ext": 1.0, "freq_scale": 0.25},
    "yarn_partial_ff": {"ff": True, "ext": 0.5, "freq_scale": 0.125, "n_dims": 32, "ne0": 80},
    "f16": {"tname": "f16"},
    "d128_batch": {"n_dims": 128, "ne0": 128, "n_tok": 20},
    "offset": {"n_dims": 32, "ne0": 96, "n_offs": 16},
}


@pytest.mark.parametrize("mode", [0, 2], ids=["norm", "neox"])
@pytest.mark.parametrize("case", list(ROPES))
def test_rope(mode: int, case: str) -> None:
    assert_ok(_rope(mode, **ROPES[case]))  # type: ignore[arg-type]


@pytest.mark.parametrize("mode, sections, n_dims", [(8, (11, 11, 10, 0), 64), (40, (11, 11, 10, 0), 64),
                                                     (24, (8, 8, 8, 8), 32)], ids=["mrope", "imrope", "vision"])
def test_rope_multi(mode: int, sections: tuple[int, ...], n_dims: int) -> None:
    def build(b: GraphBuilder) -> Ref:
        n_tok = 6
        pos = b.tensor("i32", (4 * n_tok,), "pos", input=True, data=RNG.integers(0, 500, 4 * n_tok).astype(np.int32))
        f = b.g.base.ggml_rope_multi
        f.restype = C.c_void_p
        f.argtypes = [C.c_void_p] * 4 + [C.c_int, C.POINTER(C.c_int), C.c_int, C.c_int] + [C.c_float] * 6
        p = f(b.ctx, x(b, 64, 4, n_tok).ptr, pos.ptr, None, n_dims, (C.c_int * 4)(*sections), mode, 4096, 10000.0,
              1.0, 0.0, 1.0, 32.0, 1.0)
        return Ref(p)

    assert_ok(build)


# ---------------------------------------------------------------- soft_max

def _mask(b: GraphBuilder, n_kv: int, n_q: int, tname: str = "f16", ne2: int = 1, noise: bool = True) -> Ref:
    """causal: -inf past the diagonal (aligned to the last keys), small noise elsewhere"""
    m = np.zeros((ne2, n_q, n_kv), np.float32)
    if noise:
        m += RNG.standard_normal(m.shape).astype(np.float32) * 0.5
    for i in range(n_q):
        m[:, i, n_kv - n_q + i + 1 :] = -np.inf
    data = m.astype(np.float16 if tname == "f16" else np.float32)
    return b.tensor(tname, (n_kv, n_q, ne2), "mask", input=True, data=data)


@pytest.mark.parametrize("mask", ["none", "f16", "f32"])
@pytest.mark.parametrize("max_bias", [0.0, 8.0])
def test_soft_max(mask: str, max_bias: float) -> None:
    if mask == "none" and max_bias > 0:
        pytest.skip("ggml requires a mask for ALiBi")
    def build(b: GraphBuilder, ne: tuple[int, ...], mask_ne2: int = 1) -> Ref:
        m = None if mask == "none" else _mask(b, ne[0], ne[1], mask, mask_ne2)
        return b.op("soft_max_ext", x(b, *ne, scale=3.0), m, 0.125, max_bias)

    assert_ok(lambda b: build(b, (256, 7, 6)))
    assert_ok(lambda b: build(b, (203, 9, 6, 2), mask_ne2=3))  # mask broadcast over heads
    assert_ok(lambda b: build(b, (32, 8, 1)))


def test_soft_max_plain_and_sinks() -> None:
    assert_ok(lambda b: call(b, "soft_max", "t", x(b, 77, 3)))

    def sinks(b: GraphBuilder) -> Ref:
        s = b.op("soft_max_ext", x(b, 64, 7, 4), _mask(b, 64, 7), 0.125, 0.0)
        return call(b, "soft_max_add_sinks", "tt", s, x(b, 4, name="sinks"), ctx=False, returns=False)

    assert_ok(sinks)


# ---------------------------------------------------------------- flash attention

def _kv(b: GraphBuilder, tname: str, d: int, h_kv: int, n_kv: int, kv_size: int, name: str, seqs: int = 1) -> Ref:
    """a [d, n_kv, h_kv, seqs] strided view of a KV cache [h_kv * d, kv_size], as llama.cpp reads it"""
    vals = RNG.standard_normal((kv_size, h_kv * d)).astype(np.float32)
    if tname == "f16":
        data = vals.astype(np.float16).tobytes()
    elif tname == "f32":
        data = vals.tobytes()
    else:
        data = b.g.quantize(tname, vals.reshape(-1, d))
    cache = b.tensor(tname, (h_kv * d, kv_size), name, data=data)
    rs = TYPES[tname].row_size(d)
    v = call(b, "view_4d", "tllllzzzz", cache, d, h_kv, n_kv, seqs, rs, rs * h_kv, rs * h_kv * n_kv, 0)
    return call(b, "permute", "tiiii", v, 0, 2, 1, 3)


def _flash(kv: str = "f16", *, d: int = 64, heads: int = 4, heads_kv: int = 2, n_q: int = 8, n_kv: int = 256,
           softcap: float = 0.0, max_bias: float = 0.0, mask: bool = True, sinks: bool = False, seqs: int = 1) -> Build:
    def build(b: GraphBuilder) -> Ref:
        q = call(b, "permute", "tiiii", x(b, d, heads, n_q, seqs, name="q"), 0, 2, 1, 3)  # [d, n_q, heads], strided
        k = _kv(b, kv, d, heads_kv, n_kv, seqs * n_kv + 40, "k_cache", seqs)
        v = _kv(b, kv, d, heads_kv, n_kv, seqs * n_kv + 40, "v_cache", seqs)
        m = _mask(b, n_kv, n_q, noise=False) if mask else None
        out = b.op("flash_attn_ext", q, k, v, m, 1.0 / np.sqrt(d), max_bias, softcap)
        if sinks:
            call(b, "flash_attn_ext_add_sinks", "tt", out, x(b, heads, name="sinks"), ctx=False, returns=False)
        return out

    return build


@pytest.mark.parametrize("kv", ["f16", "q8_0", "f32"])
@pytest.mark.parametrize("heads_kv", [2, 1], ids=["gqa4:2", "gqa4:1"])
@pytest.mark.parametrize("n_q", [1, 8])
def test_flash_attn(kv: str, heads_kv: int, n_q: int) -> None:
    assert_ok(_flash(kv, heads_kv=heads_kv, n_q=n_q))


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
def test_flash_attn_options(kv: str) -> None:
    assert_ok(_flash(kv, softcap=30.0))
    assert_ok(_flash(kv, max_bias=8.0))
    assert_ok(_flash(kv, mask=False, heads_kv=4))
    assert_ok(_flash(kv, sinks=True, n_q=3))
    assert_ok(_flash(kv, d=96, n_q=3, n_kv=100))
    assert_ok(_flash(kv, n_q=4, n_kv=64, seqs=2))  # two sequences (dim 3), one mask for both


def test_flash_attn_tiled_prompt() -> None:
    """n_q >= 64 with f16/f32 K and V: ggml's tiled path (f32 Q, tiles of 64 keys)"""
    assert_ok(_flash("f16", n_q=70, n_kv=200))
    assert_ok(_flash("f32", n_q=64, n_kv=128, heads_kv=4))
    assert_ok(_flash("f16", n_q=70, n_kv=200, softcap=30.0, sinks=True, max_bias=8.0))


def test_flash_attn_split_kv_follows_ggml_threads() -> None:
    """decode over >= 512 keys: ggml splits the keys per thread (2 here); given the same count the
    kernel follows it (bit for bit on the AVX2 build)"""
    from ggc.backends.c.abi import run_node
    from ggc.oracle.compare import compare
    from tests.kernel_check import node_inputs

    with GraphBuilder() as b:
        out = _flash("f16", n_q=1, n_kv=600, heads=8, heads_kv=2)(b)
        graph, live = b.capture_live(out)
        values = b.compute(2)
        leaf = {i: b.data.get(p, bytes(graph.tensors[i].nbytes)) for i, p in enumerate(live.ptrs[: live.n_leafs])}
    (t,) = [t for t in graph.nodes if t.op == "FLASH_ATTN_EXT"]
    srcs, dst_init = node_inputs(graph, values, leaf, t)
    got = run_node(t, srcs, dst_init, n_threads=2)
    assert compare(t, values[t.id], got).ok
    if _avx2_build():
        assert got == values[t.id]


# ---------------------------------------------------------------- bit exactness on the AVX2 + FMA build

EXACT: dict[str, Build] = {
    "silu": lambda b: call(b, "silu", "t", x(b, 67, 5, scale=4.0)),
    "gelu": lambda b: call(b, "gelu", "t", x(b, 67, 5, scale=4.0)),
    "swiglu": lambda b: call(b, "swiglu", "t", x(b, 134, 5, scale=4.0)),
    "norm": lambda b: call(b, "norm", "tf", x(b, 256, 5, offset=3.0), 1e-5),
    "rms_norm": lambda b: call(b, "rms_norm", "tf", x(b, 256, 5), 1e-6),
    "soft_max": lambda b: b.op("soft_max_ext", x(b, 203, 7, 4, scale=3.0), _mask(b, 203, 7), 0.125, 8.0),
    "rope_yarn": _rope(2, ff=True, ext=1.0, freq_scale=0.25),
    "argsort_ties": lambda b: call(b, "argsort", "ti", x(b, 100, 6, ties=True), 1),
    "top_k_ties": lambda b: call(b, "top_k", "ti", x(b, 100, 6, ties=True), 9),
    "flash_f16": _flash("f16", softcap=30.0, sinks=True),
    "flash_tiled": _flash("f16", n_q=70, n_kv=200),
}


@pytest.mark.skipif(not _avx2_build(), reason="bit-exactness holds for ggml's AVX2 + FMA build only")
@pytest.mark.parametrize("name", list(EXACT))
def test_bit_exact(name: str) -> None:
    for r in check(EXACT[name]):
        assert r.nmse == 0.0, (r.tensor.label(), r.tensor.op, r.nmse)
