"""The generated CUDA programs compile with nvcc: a compile check that needs no GPU (CI has none).

For each tiny model, the program `ggc run --target cuda` would build (prefill and decode graphs on
one arena) is emitted and built with make and nvcc for sm_90, linking the kernel library (built
once and cached). One more goes through the CLI: export, then `ggc compile --target cuda --build`.
Running them is the GPU machine's job (bench/cuda_run_check.sh, tests/test_run.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ggc.backends.cuda.abi import find_nvcc
from ggc.models.quantize import tiny_model
from ggc.models.tiny import ARCHS
from tests.util import run_ggc

pytestmark = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found (install the CUDA toolkit or set NVCC)")


@pytest.mark.parametrize("arch", ARCHS)
def test_generated_program_builds(arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ggc.backends.cuda.emit import compile_cuda
    from ggc.capture.llama import LlamaSession, SessionOptions
    from ggc.runtime.cprogram import build

    monkeypatch.setenv("GGC_CUDA_ARCH", "sm_90")
    with LlamaSession(tiny_model(arch, "q4_k_m"), SessionOptions(n_ctx=512, n_batch=16)) as s:
        graphs = [s.capture(16, 1)[0], s.capture(1, 1)[0]]
    out = tmp_path / "prog"
    compiled = compile_cuda(graphs, out, graph_names=["prefill", "decode"], archs=("90",))
    assert "cudaMalloc" in (out / "ggc_model_cuda.cu").read_text()
    # generated kernels take part in programmatic dependent launch as the library's do
    program = (out / "program.cu").read_text()
    from tests.test_cuda_launches import kernels_without_wait

    assert "<<<" not in program and program.count("__global__") > 0 and kernels_without_wait(program) == []
    assert "GGC_PDL_WAIT_UNLESS(1);" in program  # the norm groups read their weight before the wait
    build(compiled, target="all")
    lib = out / "libmodel.so"
    assert lib.exists() and (out / "model").exists()
    # the library exports the C API of ggc_model.h
    syms = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    for fn in ("ggc_model_create", "ggc_model_load_weights", "ggc_model_run_graph", "ggc_model_set_n_kv"):
        assert fn in syms, fn


def test_cli_compile_target_cuda_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GGC_CUDA_ARCH", "sm_90")
    model = tiny_model("gemma3", "q8_0")
    r = run_ggc("export", str(model), "--tokens", "4", "-o", str(tmp_path / "g.ggraph"))
    assert r.returncode == 0, r.stderr
    r = run_ggc("compile", str(tmp_path / "g.ggraph"), "--target", "cuda", "-o", str(tmp_path / "out"), "--build")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "built" in r.stdout and (tmp_path / "out" / "model").exists()
    assert (tmp_path / "out" / "Makefile").read_text().count("ARCH ?= 80 86 89 90") == 1
