"""The CUDA twin of tests/test_kernels_n_kv.py: FLASH_ATTN_EXT with a run-time KV length (ctx.n_kv)
through the single-node harness (ggc.backends.cuda.abi.run_node(..., n_kv=)).

The CUDA kernels are not bit-exact with ggml and split the keys by n_kv, so results are compared
with ggml under test-backend-ops' threshold rather than bit for bit. Without a GPU these skip
("no CUDA GPU: ..."); test_harness_compiles needs only nvcc.
"""

from __future__ import annotations

import subprocess

import pytest

from ggc.backends.c.abi import KERNEL_DIR as C_KERNEL_DIR
from ggc.backends.cuda import abi as cuda
from ggc.oracle.compare import compare
from tests.cuda_check import require_gpu
from tests.test_kernels_n_kv import CASES, IDS, KV_PAD, attn_graph, causal_case, fa_node, n_kv_values


def test_harness_compiles() -> None:
    """nvcc compiles the single-node harness (its n_kv argument included) without a warning."""
    nvcc = cuda.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (install the CUDA toolkit or set NVCC)")
    r = subprocess.run([nvcc, "-std=c++17", "-O3", "-arch=sm_90", "-I", str(C_KERNEL_DIR), "-I", str(cuda.KERNEL_DIR),
                        "-c", str(cuda.KERNEL_DIR / "ggc_cuda_harness.cu"), "-o", "/dev/null"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr.lower(), r.stderr


@pytest.mark.parametrize(("kv", "n_q", "heads", "heads_kv", "total", "n_past"), CASES, ids=IDS)
def test_flash_attn_n_kv_equals_all_cells(kv: str, n_q: int, heads: int, heads_kv: int, total: int,
                                          n_past: int) -> None:
    """with llama.cpp's causal mask, attending over the first n_kv cells matches ggml over all cells"""
    require_gpu()
    case = causal_case(n_q, heads, heads_kv, total, n_past)
    t, srcs, dst_init, ref = fa_node(attn_graph(kv, total, *case))
    for n_kv in [0, *n_kv_values(n_past + n_q, total), total, total + KV_PAD]:
        r = compare(t, ref, cuda.run_node(t, srcs, dst_init, n_kv=n_kv))
        assert r.ok, (n_kv, r.nmse)


@pytest.mark.parametrize(("kv", "n_q", "heads", "heads_kv", "total", "n_past"), CASES, ids=IDS)
def test_flash_attn_n_kv_reads_no_cell_past_it(kv: str, n_q: int, heads: int, heads_kv: int, total: int,
                                              n_past: int) -> None:
    """cells past n_kv unmasked: the result is ggml's on the graph of n_kv cells; over all cells it differs"""
    require_gpu()
    for n_kv in n_kv_values(n_past + n_q, total):
        case = causal_case(n_q, heads, heads_kv, total, n_past, trap_from=n_kv)
        t, srcs, dst_init, _ = fa_node(attn_graph(kv, total, *case))
        _, _, _, ref = fa_node(attn_graph(kv, n_kv, *case))
        r = compare(t, ref, cuda.run_node(t, srcs, dst_init, n_kv=n_kv))
        assert r.ok, (n_kv, r.nmse)
        assert not compare(t, ref, cuda.run_node(t, srcs, dst_init, n_kv=0)).ok, "the trap did not show"
