"""CUDA kernels for elementwise, sort, norm, rope, softmax and attention ops, node by node against ggml.

Every case builds a graph with the real ggml C API (the builders of tests/test_kernels_ops.py) and
checks each CUDA kernel on ggml's own inputs through tests.cuda_check (test-backend-ops' NMSE
thresholds). Also: in-place runs (dst aliasing src0 on the device), flash attention's runtime KV
length (ctx.n_kv), and the long-row argsort path through work memory.

Without a GPU these skip ("no CUDA GPU: ..."); test_ops_sources_compile needs only nvcc.
"""

from __future__ import annotations

import ctypes as C
import inspect
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ggc.backends.c.abi import MAX_SRC, host_node
from ggc.backends.c.abi import _fill as c_fill
from ggc.backends.cuda import abi as cuda
from ggc.capture.builder import GraphBuilder, Ref
from ggc.ir.graph import Tensor
from ggc.ir.types import TYPES
from ggc.oracle.compare import compare
from tests.cuda_check import assert_ok, require_gpu
from tests.kernel_check import node_inputs
from tests.test_kernels_ops import BINARY_SHAPES, GLU, ROPES, UNARY, _flash, _kv, _mask, _rope, call, h, permuted, x

RNG = np.random.default_rng(77)
Build = Callable[[GraphBuilder], Ref]
OWN_SOURCES = ["ggc_cuda_ops.cu", "ggc_cuda_attention.cu"]


# ---------------------------------------------------------------- compile only (no GPU needed)

def test_ops_sources_compile() -> None:
    """nvcc compiles the op and attention kernels for sm_90 without a warning."""
    nvcc = cuda.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (install the CUDA toolkit or set NVCC)")
    from ggc.backends.c.abi import KERNEL_DIR as C_DIR

    def build(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([nvcc, "-std=c++17", "-O3", "-arch=sm_90", "-I", str(C_DIR), "-I", str(cuda.KERNEL_DIR),
                               "-c", str(cuda.KERNEL_DIR / name), "-o", "/dev/null"], capture_output=True, text=True)

    with ThreadPoolExecutor(len(OWN_SOURCES)) as ex:
        results = list(ex.map(build, OWN_SOURCES))
    for name, r in zip(OWN_SOURCES, results):
        assert r.returncode == 0, f"{name}:\n{r.stderr}"
        assert "warning" not in r.stderr.lower(), f"{name}:\n{r.stderr}"


# ---------------------------------------------------------------- binary ops, add_id, scale, clamp, sums

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
    assert_ok(lambda b: call(b, "add", "tt", x(b, 4096, 3), x(b, 4096, 3, name="y")))


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
    assert_ok(lambda b: call(b, "sum_rows", "t", x(b, 5000, 3)))
    assert_ok(lambda b: call(b, "sum_rows", "t", permuted(b, 48, 3, 5)))


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
def test_concat(dim: int) -> None:
    ne_a, ne_b = [16, 3, 2, 2], [16, 3, 2, 2]
    ne_b[dim] = 5
    assert_ok(lambda b: call(b, "concat", "tti", x(b, *ne_a), x(b, *ne_b, name="y"), dim))
    assert_ok(lambda b: call(b, "concat", "tti", h(b, *ne_a), h(b, *ne_b, name="y"), dim))


# ---------------------------------------------------------------- argsort, top_k (distinct values: ties are
# ordered by index here, by libstdc++'s algorithm in ggml's CPU backend; contiguous rows: ggml's CPU
# kernels address row i at i * nb01, which is only meaningful for them)

def distinct(b: GraphBuilder, n: int, rows: int) -> Ref:
    """rows of n distinct values (random float32 rows of thousands of elements hold ties)"""
    v = (RNG.permutation(n * rows).astype(np.float32) - n * rows / 2) / 64
    return b.tensor("f32", (n, rows), "x", input=True, data=v.reshape(rows, n))


@pytest.mark.parametrize("n", [1, 7, 16, 17, 100, 256, 1000, 5000, 16384, 20000])
def test_argsort(n: int) -> None:
    """up to 16384 elements a row sorts in shared memory; 20000 goes through work memory"""
    for order in (0, 1):
        assert_ok(lambda b, order=order: call(b, "argsort", "ti", distinct(b, n, 3), order))


@pytest.mark.parametrize("n", [7, 16, 100, 256, 20000])
def test_top_k(n: int) -> None:
    for k in sorted({1, 2, 5, n // 2 + 1, n}):
        if k <= n:
            assert_ok(lambda b, k=k: call(b, "top_k", "ti", distinct(b, n, 4), k))


# ---------------------------------------------------------------- unary and glu

@pytest.mark.parametrize("op", UNARY)
def test_unary(op: str) -> None:
    # scale 4 reaches GELU's +-10 cutoff; f16 and strided sources too
    assert_ok(lambda b: call(b, op, "t", x(b, 67, 5, 2, scale=4.0)))
    assert_ok(lambda b: call(b, op, "t", x(b, 256, 8)))
    assert_ok(lambda b: call(b, op, "t", h(b, 64, 5, scale=4.0)))
    assert_ok(lambda b: call(b, op, "t", permuted(b, 40, 3, 4)))


def test_unary_xielu() -> None:
    assert_ok(lambda b: call(b, "xielu", "tffff", x(b, 67, 5, scale=3.0), 0.8, 0.8, 0.5, -1e-6))


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

@pytest.mark.parametrize("ne0", [32, 37, 256, 4096, 10000])
def test_norms(ne0: int) -> None:
    assert_ok(lambda b: call(b, "norm", "tf", x(b, ne0, 5, 2, offset=3.0), 1e-5))
    assert_ok(lambda b: call(b, "rms_norm", "tf", x(b, ne0, 8), 1e-6))
    assert_ok(lambda b: call(b, "l2_norm", "tf", x(b, ne0, 5, 2), 1e-6))


def test_norms_strided() -> None:
    assert_ok(lambda b: call(b, "rms_norm", "tf", permuted(b, 128, 4, 3), 1e-6))
    assert_ok(lambda b: call(b, "norm", "tf", call(b, "transpose", "t", x(b, 64, 48)), 1e-5))
    assert_ok(lambda b: call(b, "l2_norm", "tf", call(b, "transpose", "t", x(b, 64, 48)), 1e-6))


# ---------------------------------------------------------------- rope

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
    assert_ok(lambda b: build(b, (4096, 3, 2)))   # a block per row, logits staged in shared memory
    assert_ok(lambda b: build(b, (20000, 2, 1)))  # too long to stage: recomputed


def test_soft_max_plain_and_sinks() -> None:
    assert_ok(lambda b: call(b, "soft_max", "t", x(b, 77, 3)))

    def sinks(b: GraphBuilder, n: int) -> Ref:
        s = b.op("soft_max_ext", x(b, n, 7, 4), _mask(b, n, 7), 0.125, 0.0)
        return call(b, "soft_max_add_sinks", "tt", s, x(b, 4, name="sinks"), ctx=False, returns=False)

    assert_ok(lambda b: sinks(b, 64))
    assert_ok(lambda b: sinks(b, 1000))


# ---------------------------------------------------------------- in place: dst aliases src0 on the device

def run_aliased(t: Tensor, srcs: list[bytes | None]) -> bytes:
    """Run t's kernel with src0 and dst the same device buffer (ggml's *_inplace ops): the harness
    keeps a source whose host pointer is the destination's pointing at the destination."""
    lib = cuda.load_library()
    fn = getattr(lib, cuda.kernel_name(t))
    work = getattr(lib, cuda.work_name(t), None)
    node, dst, bufs = host_node(t, srcs, srcs[0][: t.nbytes])
    c_fill(node.src[0], t.src[0], dst)  # src0 is the destination's memory
    sizes = (C.c_size_t * MAX_SRC)(*[len(bufs[j]) if j in bufs else 0 for j in range(MAX_SRC)])
    sizes[0] = t.nbytes
    err = C.create_string_buffer(512)
    args = [C.cast(fn, C.c_void_p), C.cast(work, C.c_void_p) if work else None, C.byref(node), sizes, t.nbytes, err,
            len(err)]
    args += [0] * (len(lib.ggc_cuda_run_node.argtypes) - len(args))  # a harness with more (n_kv): zeros
    rc = lib.ggc_cuda_run_node(*args)
    assert rc == 0, err.value.decode(errors="replace")
    return dst.raw


def assert_inplace_ok(build: Build) -> None:
    require_gpu()
    with GraphBuilder() as b:
        out = build(b)
        graph, live = b.capture_live(out)
        values = b.compute()
        leaf = {i: b.data.get(p, bytes(graph.tensors[i].nbytes)) for i, p in enumerate(live.ptrs[: live.n_leafs])}
    ran = 0
    for t in graph.nodes:
        s0 = t.src[0]
        if t.opdef.view or s0 is None or (s0.ne, s0.nb, s0.type.name) != (t.ne, t.nb, t.type.name):
            continue
        srcs, _ = node_inputs(graph, values, leaf, t)
        r = compare(t, values[t.id], run_aliased(t, srcs))
        assert r.ok, (t.label(), t.op, r.nmse)
        ran += 1
    assert ran, "no node could run in place"


INPLACE: dict[str, Build] = {
    "add_broadcast": lambda b: call(b, "add", "tt", x(b, 128, 8, 3), x(b, 128, 1, 1, name="y")),
    "mul": lambda b: call(b, "mul", "tt", x(b, 4096, 4), x(b, 4096, 4, name="y")),
    "scale": lambda b: call(b, "scale_bias", "tff", x(b, 100, 8), 0.37, -1.5),
    "clamp": lambda b: call(b, "clamp", "tff", x(b, 64, 8, 2), -0.5, 0.7),
    "silu": lambda b: call(b, "silu", "t", x(b, 67, 5, 2, scale=4.0)),
    "gelu_f16": lambda b: call(b, "gelu", "t", h(b, 64, 5, scale=4.0)),
    "soft_max": lambda b: b.op("soft_max_ext", x(b, 203, 9, 6, scale=3.0), _mask(b, 203, 9), 0.125, 8.0),
    "soft_max_long": lambda b: b.op("soft_max_ext", x(b, 4096, 3, 2, scale=3.0), None, 0.125, 0.0),
    "rope_neox": _rope(2, ff=True, ext=1.0, freq_scale=0.25),
    "rope_offset": _rope(0, n_dims=32, ne0=96, n_offs=16),
    "rms_norm": lambda b: call(b, "rms_norm", "tf", x(b, 4096, 8), 1e-6),
    "rms_norm_short": lambda b: call(b, "rms_norm", "tf", x(b, 128, 8, 4), 1e-6),
    "norm": lambda b: call(b, "norm", "tf", x(b, 1000, 5, offset=3.0), 1e-5),
}


@pytest.mark.parametrize("name", list(INPLACE))
def test_inplace(name: str) -> None:
    assert_inplace_ok(INPLACE[name])


# ---------------------------------------------------------------- flash attention

FA = ("FLASH_ATTN_EXT",)


@pytest.mark.parametrize("kv", ["f16", "q8_0", "f32"])
@pytest.mark.parametrize("heads_kv", [2, 1], ids=["gqa4:2", "gqa4:1"])
@pytest.mark.parametrize("n_q", [1, 8])
def test_flash_attn(kv: str, heads_kv: int, n_q: int) -> None:
    assert_ok(_flash(kv, heads_kv=heads_kv, n_q=n_q), FA)


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
@pytest.mark.parametrize("n_kv", [256, 4096])
@pytest.mark.parametrize("n_q", [1, 8])
@pytest.mark.parametrize("d", [64, 128])
def test_flash_attn_gqa_32_8(kv: str, n_kv: int, n_q: int, d: int) -> None:
    """the target models' shapes: 32 query heads on 8 KV heads; decode splits the keys (split-K)"""
    assert_ok(_flash(kv, d=d, heads=32, heads_kv=8, n_q=n_q, n_kv=n_kv), FA)


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
def test_flash_attn_options(kv: str) -> None:
    assert_ok(_flash(kv, softcap=30.0), FA)
    assert_ok(_flash(kv, max_bias=8.0), FA)
    assert_ok(_flash(kv, mask=False, heads_kv=4), FA)
    assert_ok(_flash(kv, sinks=True, n_q=3), FA)
    assert_ok(_flash(kv, sinks=True, n_q=1, n_kv=2048, heads=8, heads_kv=2), FA)  # sinks in the split combine
    assert_ok(_flash(kv, d=96, n_q=3, n_kv=100), FA)
    assert_ok(_flash(kv, n_q=4, n_kv=64, seqs=2), FA)  # two sequences (dim 3), one mask for both
    assert_ok(_flash(kv, d=256, n_q=2, n_kv=300, heads=4, heads_kv=1), FA)


@pytest.mark.parametrize("kv", ["f16", "q8_0", "f32"])
@pytest.mark.parametrize("d", [64, 128])
def test_flash_attn_tensor_cores(kv: str, d: int) -> None:
    """n_q >= 16: the mma.sync kernel (64 queries per block, 64-key tiles, causal tiles skipped)"""
    assert_ok(_flash(kv, d=d, n_q=16, n_kv=256), FA)
    assert_ok(_flash(kv, d=d, n_q=70, n_kv=200, heads=8, heads_kv=2), FA)
    assert_ok(_flash(kv, d=d, n_q=128, n_kv=1000, heads=4, heads_kv=4, softcap=30.0, sinks=True, max_bias=8.0), FA)
    assert_ok(_flash(kv, d=d, n_q=32, n_kv=4096, heads=4, heads_kv=1), FA)  # few blocks: split-K
    assert_ok(_flash(kv, d=d, n_q=20, n_kv=300, mask=False, seqs=2), FA)


def _decode(d: int, heads: int, heads_kv: int, n_kv: int, pad: int = 0, holes: bool = False, *,
            softcap: float = 0.0, max_bias: float = 0.0, sinks: bool = False, seqs: int = 1, kv: str = "f16") -> Build:
    """one query row per head (decode) against f16 K/V views of a cache; the mask is -inf over the
    last `pad` cells (as the runtime pads n_kv past the cells in use) and, with holes, over random
    single cells and one whole 32-key tile, with small noise elsewhere"""
    def build(b: GraphBuilder) -> Ref:
        q = call(b, "permute", "tiiii", x(b, d, heads, 1, seqs, name="q"), 0, 2, 1, 3)
        k = _kv(b, kv, d, heads_kv, n_kv, seqs * n_kv + 40, "k_cache", seqs)
        v = _kv(b, kv, d, heads_kv, n_kv, seqs * n_kv + 40, "v_cache", seqs)
        m = RNG.standard_normal((1, n_kv)).astype(np.float32) * 0.5
        if pad:
            m[:, n_kv - pad :] = -np.inf
        if holes:
            m[:, RNG.choice(n_kv - pad, size=max(1, (n_kv - pad) // 9), replace=False)] = -np.inf
            m[:, 32:64] = -np.inf
        mask = b.tensor("f16", (n_kv, 1), "mask", input=True, data=m.astype(np.float16))
        out = b.op("flash_attn_ext", q, k, v, mask, 1.0 / np.sqrt(d), max_bias, softcap)
        if sinks:
            call(b, "flash_attn_ext_add_sinks", "tt", out, x(b, heads, name="sinks"), ctx=False, returns=False)
        return out

    return build


@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("heads", [4, 8, 16, 28, 64], ids=lambda h: f"gqa{h // 4}")
@pytest.mark.parametrize("n_kv", [100, 640, 4096])
def test_flash_attn_decode(d: int, heads: int, n_kv: int) -> None:
    """k_fa_dec (n_q = 1, f16 K/V): GQA groups of 1, 2, 4, 7 and 16 heads (a block of 1, 2, 4 or 8
    rows, two blocks of 8 for 16); 100 keys: one block, a partial tile; 640 and 4096: the split
    merged by the last block to arrive, with masked padding and holes (a whole tile among them)"""
    pad = {100: 0, 640: 200, 4096: 300}[n_kv]
    assert_ok(_decode(d, heads, 4, n_kv, pad, holes=n_kv > 100), FA)


@pytest.mark.parametrize("n_kv", [96, 2048])
def test_flash_attn_decode_options(n_kv: int) -> None:
    """softcap, ALiBi, sinks and two sequences through k_fa_dec, unsplit (96) and split (2048)"""
    assert_ok(_decode(128, 8, 2, n_kv, 10, softcap=30.0), FA)
    assert_ok(_decode(128, 8, 2, n_kv, 10, max_bias=8.0), FA)
    assert_ok(_decode(64, 8, 2, n_kv, 10, holes=True, sinks=True), FA)
    assert_ok(_decode(64, 8, 8, n_kv, 10, sinks=True), FA)
    assert_ok(_decode(128, 8, 2, n_kv, 10, seqs=2), FA)


def q8a_of(x: np.ndarray) -> bytes:
    """The q8a activations (quants, then a 16-byte meta a 32-element block) ggc_k_quantize_q8a makes
    of an f32 row, as ggml-CPU's x86 q8_0 quantizer rounds: d = amax / 127, q = x * (127 / amax)
    rounded half to even; meta (f16(d), f16(d) * the sums of each half's quants, 0)."""
    blocks = x.astype(np.float32).reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint((blocks * inv[:, None]).astype(np.float32)).astype(np.int32)
    dh = d.astype(np.float16).astype(np.float32)
    sums = q.reshape(-1, 2, 16).sum(axis=2).astype(np.float32)
    meta = np.stack([dh, dh * sums[:, 0], dh * sums[:, 1], np.zeros_like(dh)], axis=1).astype(np.float32)
    return q.astype(np.int8).tobytes() + meta.tobytes()


@pytest.mark.parametrize("case", [(128, 32, 32, 100, "f16"), (128, 32, 32, 1024, "f16"), (64, 32, 8, 640, "f16"),
                                  (128, 8, 8, 256, "q8_0")], ids=["7b", "7b-split", "1b-gqa4", "q8_0-kv"])
def test_flash_attn_quant_out(case: tuple[int, int, int, int, str]) -> None:
    """With the context's quant_out (decode: the output projection reads the attention's row as q8a
    activations), the work buffer holds exactly what the conversion kernel would make of the output
    row: written by k_fa_dec's epilogue (f16 K/V, unsplit and split), else by a launch after it (a
    q8_0 cache); the output itself is unchanged."""
    require_gpu()
    d, heads, heads_kv, n_kv, kv = case
    with GraphBuilder() as b:
        out = _decode(d, heads, heads_kv, n_kv, 20, kv=kv)(b)
        graph, live = b.capture_live(out)
        values = b.compute()
        leaf = {i: b.data.get(p, bytes(graph.tensors[i].nbytes)) for i, p in enumerate(live.ptrs[: live.n_leafs])}
    (t,) = [t for t in graph.nodes if t.op == "FLASH_ATTN_EXT"]
    srcs, dst_init = node_inputs(graph, values, leaf, t)
    dst, work = cuda.run_node_quant_out(t, srcs, dst_init, k=d * heads)
    assert dst == cuda.run_node(t, srcs, dst_init)
    assert compare(t, values[t.id], dst).ok
    assert work == q8a_of(np.frombuffer(dst, np.float32))


def test_flash_attn_decode_repeats() -> None:
    """the fused combine's arrival counters are back at 0 after each launch: the same split node
    run again gives the same bytes, and ggml's result"""
    require_gpu()
    with GraphBuilder() as b:
        out = _decode(128, 32, 8, 1024, 100, holes=True)(b)
        graph, live = b.capture_live(out)
        values = b.compute()
        leaf = {i: b.data.get(p, bytes(graph.tensors[i].nbytes)) for i, p in enumerate(live.ptrs[: live.n_leafs])}
    (t,) = [t for t in graph.nodes if t.op == "FLASH_ATTN_EXT"]
    srcs, dst_init = node_inputs(graph, values, leaf, t)
    runs = [cuda.run_node(t, srcs, dst_init) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    r = compare(t, values[t.id], runs[0])
    assert r.ok, r.nmse


# ---------------------------------------------------------------- flash attention: runtime KV length

def _kv_view(b: GraphBuilder, tname: str, vals: np.ndarray, d: int, h_kv: int, n_kv: int, name: str) -> Ref:
    """a [d, n_kv, h_kv] view of a KV cache holding vals [kv_size, h_kv * d]"""
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


def _attn_graph(kv: str, n_kv: int, q: np.ndarray, kc: np.ndarray, vc: np.ndarray, mask: np.ndarray,
                d: int, heads_kv: int) -> Build:
    def build(b: GraphBuilder) -> Ref:
        n_q, heads = q.shape[0], q.shape[1]
        qt = b.tensor("f32", (d, heads, n_q), "q", input=True, data=q)
        qp = call(b, "permute", "tiiii", qt, 0, 2, 1, 3)
        k = _kv_view(b, kv, kc, d, heads_kv, n_kv, "k_cache")
        v = _kv_view(b, kv, vc, d, heads_kv, n_kv, "v_cache")
        m16 = np.ascontiguousarray(mask[:, :n_kv]).astype(np.float16)
        m = b.tensor("f16", (n_kv, n_q), "mask", input=True, data=m16)
        return b.op("flash_attn_ext", qp, k, v, m, 1.0 / np.sqrt(d), 0.0, 0.0)

    return build


def _fa_node(build: Build) -> tuple[Tensor, list, bytes | None, bytes]:
    with GraphBuilder() as b:
        out = build(b)
        graph, live = b.capture_live(out)
        values = b.compute()
        leaf = {i: b.data.get(p, bytes(graph.tensors[i].nbytes)) for i, p in enumerate(live.ptrs[: live.n_leafs])}
    (t,) = [t for t in graph.nodes if t.op == "FLASH_ATTN_EXT"]
    srcs, dst_init = node_inputs(graph, values, leaf, t)
    return t, srcs, dst_init, values[t.id]


@pytest.mark.parametrize("kv", ["f16", "q8_0"])
@pytest.mark.parametrize("n_q", [1, 8, 32])
def test_flash_attn_runtime_n_kv(kv: str, n_q: int) -> None:
    """a graph over the whole cache (1024 cells) run with ctx.n_kv = 300 equals ggml on the first
    300 cells: the cells past n_kv (mask 0 there, so reading them would show) are never attended"""
    require_gpu()
    if "n_kv" not in inspect.signature(cuda.run_node).parameters:
        pytest.skip("the CUDA harness cannot set ctx.n_kv yet: run_node(..., n_kv=) / ggc_cuda_run_node(..., n_kv)")
    d, heads, heads_kv, total, used = 128, 8, 2, 1024, 300
    q = RNG.standard_normal((n_q, heads, d)).astype(np.float32)
    kc = RNG.standard_normal((total, heads_kv * d)).astype(np.float32)
    vc = RNG.standard_normal((total, heads_kv * d)).astype(np.float32)
    mask = np.zeros((n_q, total), np.float32)
    for i in range(n_q):
        mask[i, used - n_q + i + 1 : used] = -np.inf  # causal within the used cells, 0 past them
    t, srcs, dst_init, _ = _fa_node(_attn_graph(kv, total, q, kc, vc, mask, d, heads_kv))
    _, _, _, ref = _fa_node(_attn_graph(kv, used, q, kc, vc, mask, d, heads_kv))
    got = cuda.run_node(t, srcs, dst_init, n_kv=used)
    r = compare(t, ref, got)
    assert r.ok, r.nmse
    full = cuda.run_node(t, srcs, dst_init, n_kv=0)  # 0: every cell of the view
    assert not compare(t, ref, full).ok
