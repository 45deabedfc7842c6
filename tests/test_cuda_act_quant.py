"""CUDA matrix products with quantized weights quantize src1 exactly as ggml-CPU does.

ggml-CPU quantizes the activations to the weight type's vec_dot_type (q8_0, q8_1 or q8_K) before
its integer block dots; the CUDA kernels reproduce that quantization (ggc_cuda_quants.cuh, the q8a
section): the matrix-vector path dots the same 8-bit quants under the same (f16-rounded or float)
scales, the tensor-core path multiplies f16(q * d) of them. test-backend-ops' thresholds cannot
see the difference (5e-4 against an 8-bit quantization's ~1e-5), but greedy decoding of a whole
model can, so these bounds are far tighter:
  - matrix-vector (<= 8 columns): the same integers, only the float summation order differs from
    the CPU's (NMSE ~1e-14); any other quantization (f32 d instead of f16, 32-element blocks for
    the K-quants, ...) is >= ~1e-8;
  - tensor cores (> 8 columns): the f16 rounding of q * d and of the dequantized weights remains
    (NMSE ~1e-7); unquantized f16 activations give ~1e-5.

Without a GPU these skip ("no CUDA GPU: ...").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ggc.capture.builder import GraphBuilder, Ref
from tests.cuda_check import check, require_gpu
from tests.test_builder import weight

RNG = np.random.default_rng(7)

# weight type -> its activation quantization on the CPU: q8_0, q8_1 (q4_1, q5_1), q8_K (K-quants)
TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"]
MMV_BOUND = 1e-10  # integer dots on identical quants
MMQ_BOUND = 3e-6  # f16 products of the same quants

Build = Callable[[GraphBuilder], Ref]


def _x(b: GraphBuilder, data: np.ndarray) -> Ref:
    return b.tensor("f32", tuple(reversed(data.shape)), "x", input=True, data=np.ascontiguousarray(data, np.float32))


def _mul_mat(tname: str, n: int, x: np.ndarray | None = None, k: int = 1280, rows: int = 160) -> Build:
    """k = 1280: five 256-element blocks, a full and a partial 1024-element chunk of the
    matrix-vector kernel; 160 rows: a partial 128-row tile of the tensor-core kernel."""
    data = RNG.standard_normal((n, k)).astype(np.float32) if x is None else x
    return lambda b: b.op("mul_mat", weight(b, tname, k, rows), _x(b, data))


def _mul_mat_id(tname: str, n_tok: int, n_expert: int, n_used: int, k: int = 512) -> Build:
    ids = np.stack([RNG.permutation(n_expert)[:n_used] for _ in range(n_tok)]).astype(np.int32)
    data = RNG.standard_normal((n_tok, n_used, k)).astype(np.float32)

    def build(b: GraphBuilder) -> Ref:
        experts = weight(b, tname, k, 96, "experts", ne2=n_expert)
        idt = b.tensor("i32", (n_used, n_tok), "ids", input=True, data=ids)
        return b.op("mul_mat_id", experts, _x(b, data), idt)

    return build


def _ties(n: int, k: int = 1280) -> np.ndarray:
    """Activations on a coarse grid: many blocks whose largest |x| occurs several times, with both
    signs (which one the CPU takes sets the sign of q8_K's scale), and all-zero blocks (d = 0)."""
    x = np.round(RNG.standard_normal((n, k)) * 2) / 4
    x[:, 256:512] = 0.0
    x[:, 40:64] = 0.0
    for r in range(n):
        x[r, 512 + 3] = -3.0  # first of the block's largest |x| is negative ...
        x[r, 512 + 200] = 3.0  # ... a later one positive
        x[r, 768 + 5] = 3.0
        x[r, 768 + 6] = -3.0
    return x.astype(np.float32)


def _bound(cols: int) -> float:
    return MMV_BOUND if cols <= 8 else MMQ_BOUND


def _strict(build: Build, op: str, bound: float) -> None:
    require_gpu()
    results = check(build, (op,))
    assert results, "no kernel ran"
    bad = [(r.tensor.label(), r.nmse) for r in results if not r.nmse <= bound]
    assert not bad, f"NMSE above {bound:g}: {bad}"


@pytest.mark.parametrize("n", [1, 4, 16])
@pytest.mark.parametrize("tname", TYPES)
def test_mul_mat_matches_cpu_quantization(tname: str, n: int) -> None:
    _strict(_mul_mat(tname, n), "MUL_MAT", _bound(n))


@pytest.mark.parametrize("n", [1, 16])
@pytest.mark.parametrize("tname", ["q4_0", "q4_1", "q4_K", "q6_K"])
def test_mul_mat_ties_and_zero_blocks(tname: str, n: int) -> None:
    _strict(_mul_mat(tname, n, _ties(n)), "MUL_MAT", _bound(n))


@pytest.mark.parametrize(("n_tok", "n_expert", "n_used", "cols"), [
    (1, 4, 2, 1),  # one (slot, token) pair per grid row: matrix-vector
    (20, 16, 2, 8),  # sparse: grouped matrix-vector tiles
    (40, 4, 2, 40),  # grouped tensor-core tiles
])
@pytest.mark.parametrize("tname", ["q4_0", "q4_1", "q8_0", "q4_K", "q6_K"])
def test_mul_mat_id_matches_cpu_quantization(tname: str, n_tok: int, n_expert: int, n_used: int, cols: int) -> None:
    _strict(_mul_mat_id(tname, n_tok, n_expert, n_used), "MUL_MAT_ID", _bound(cols))
