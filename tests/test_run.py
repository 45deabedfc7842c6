"""ggc run: generation with a generated program, token for token the same as llama.cpp."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

import ggc
from ggc.errors import GgcError
from ggc.llm.sampling import Sampler
from ggc.models.quantize import tiny_model
from ggc.models.tiny import ARCHS
from tests.util import run_ggc

# longer than the prefill batch used below (16), so prompts run in chunks, then token by token
PROMPT = ("The old lighthouse keeper climbed the stairs every evening, counting each step, and looked out "
          "over the grey water for the ships that never came")


CASES = [(a, q) for a in ARCHS for q in ("f16", "q8_0", "q4_0", "q4_k_m")]


@pytest.mark.parametrize("arch,quant", CASES)
def test_64_greedy_tokens_equal_llama_cpp(arch: str, quant: str, tmp_path: Path) -> None:
    r = run_ggc("run", str(tiny_model(arch, quant)), "-p", PROMPT, "-n", "64", "--ctx", "256", "--batch", "16",
                "--check", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
    assert "check: all 64 generated tokens equal llama.cpp's greedy tokens" in r.stdout or (
        "check: all" in r.stdout and "generated tokens equal" in r.stdout), r.stdout  # fewer if EOG came first
    assert "generation" in r.stdout and "tok/s, target c" in r.stdout


def _no_cuda() -> str:
    from ggc.backends.cuda.abi import driver_devices, find_nvcc

    return "" if find_nvcc() and driver_devices() else "needs nvcc and a CUDA GPU (runs on the GPU machine)"


@pytest.mark.skipif(bool(_no_cuda()), reason=_no_cuda() or "-")
@pytest.mark.parametrize("arch,quant", CASES)
def test_64_greedy_tokens_equal_llama_cpp_on_cuda(arch: str, quant: str, tmp_path: Path) -> None:
    # --ctx 512: attention reads 256 cells at run time (the n_kv the runtime rounds up to), not 512
    r = run_ggc("run", str(tiny_model(arch, quant)), "-p", PROMPT, "-n", "64", "--ctx", "512", "--batch", "16",
                "--check", "--target", "cuda", cwd=tmp_path)
    print(r.stdout[-600:], r.stderr[-300:])
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
    assert "check: all" in r.stdout and "generated tokens equal" in r.stdout, r.stdout
    assert "tok/s, target cuda" in r.stdout


@pytest.mark.skipif(bool(_no_cuda()), reason=_no_cuda() or "-")
def test_out_of_gpu_memory_is_a_clear_error(tmp_path: Path) -> None:
    """With the GPU all but full (this process holds the rest through the driver API), a program whose
    arena does not fit (a 2M-cell KV cache: 2 GiB) fails with the size it asked for, exit status 2, no
    traceback; nothing falls back to another target."""
    import ctypes

    cu = ctypes.CDLL("libcuda.so.1")
    dev, ctx, ptr = ctypes.c_int(0), ctypes.c_void_p(), ctypes.c_uint64(0)
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    assert cu.cuInit(0) == 0 and cu.cuDeviceGet(ctypes.byref(dev), 0) == 0
    assert cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0 and cu.cuCtxSetCurrent(ctx) == 0
    try:
        assert cu.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)) == 0
        leave = 1 << 30  # room for the other process's context and kernels, not for its arena
        assert cu.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(free.value - leave)) == 0
        r = run_ggc("run", str(tiny_model("llama", "q8_0")), "-p", "Hello", "-n", "2", "--ctx", str(2 << 20),
                    "--batch", "8", "--target", "cuda", cwd=tmp_path)
    finally:
        if ptr.value:
            cu.cuMemFree_v2(ptr)
        cu.cuDevicePrimaryCtxRelease(dev)
    assert r.returncode == 2, r.stdout[-800:] + r.stderr[-800:]
    assert "out of GPU memory" in r.stderr and "byte arena" in r.stderr, r.stderr[-800:]
    assert "Traceback" not in r.stderr and "target c" not in r.stdout


def test_cuda_without_a_gpu_falls_back_to_c(tmp_path: Path) -> None:
    if not _no_cuda():
        pytest.skip("a GPU is present: nothing to fall back from")
    r = run_ggc("run", str(tiny_model("llama", "q8_0")), "-p", "Hello", "-n", "2", "--ctx", "256", "--batch", "8",
                "--target", "cuda", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "using the C target" in r.stderr and "target c" in r.stdout
    assert len([ln for ln in r.stderr.splitlines() if "using the C target" in ln]) == 1


def test_second_start_reuses_the_compiled_program(tmp_path: Path) -> None:
    model = tiny_model("qwen2", "q4_0")
    args = ("run", str(model), "-p", "Hello there", "-n", "4", "--ctx", "256", "--batch", "8")
    run_ggc(*args, cwd=tmp_path)
    r = run_ggc(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "using the compiled program" in r.stderr and "(cached program)" in r.stderr


def test_python_api_generate_and_eval() -> None:
    with ggc.Model(tiny_model("llama", "q8_0"), ctx=256, batch=8, progress=None) as m:
        g = m.generate("Once upon a time", n=8)
        assert len(g.tokens) <= 8 and g.text == m.detokenize(g.tokens)
        assert g.stats.gen_tokens == len(g.tokens) and g.stats.prompt_tokens == len(m.tokenize("Once upon a time"))
        m.reset()
        logits = m.eval(m.tokenize("Once upon a time"))
        assert logits.shape == (m.n_vocab,) and np.isfinite(logits).all()
        assert int(np.argmax(logits)) == g.tokens[0]
        # sampling with a seed is reproducible
        a = m.generate("Once", n=6, sampler=Sampler(temperature=0.8, seed=7)).tokens
        b = m.generate("Once", n=6, sampler=Sampler(temperature=0.8, seed=7)).tokens
        assert a == b


@pytest.mark.parametrize("target", ["c", "cuda"])
def test_greedy_stream_runs_a_step_ahead(target: str) -> None:
    """The greedy stream queues step k + 1 (its token fed on the device) before reading step k's: the
    tokens are those of one step at a time, an abandoned stream leaves nothing behind, and a stop at
    end-of-generation or n leaves n_past at the tokens really appended."""
    if target == "cuda" and _no_cuda():
        pytest.skip(_no_cuda())
    with ggc.Model(tiny_model("llama", "q8_0"), target=target, ctx=256, batch=8, progress=None) as m:
        prompt = m.tokenize(PROMPT)  # chunks of 8, then single tokens
        piped = list(m.stream(prompt, n=12))
        assert m.n_past == len(prompt) + len(piped) - 1 and m._pending == 0
        m.reset()
        steps = [m.eval_greedy(prompt)]
        while len(steps) < len(piped):
            steps.append(m.eval_greedy([steps[-1]]))
        assert piped == steps
        # read 3 of 12 and drop the rest: the next stream starts clean
        it = m.stream(prompt, n=12)
        assert [next(it) for _ in range(3)] == piped[:3]
        assert m._pending == 1
        assert list(m.stream(prompt, n=12)) == piped
        # end-of-generation after the first token: the step queued ahead is dropped
        eog = piped[0]
        m.is_eog = lambda t: t == eog  # type: ignore[method-assign]
        assert list(m.stream(prompt, n=12)) == [eog]
        assert m.n_past == len(prompt) and m._pending == 0
        # nothing asked for: the prompt runs and nothing stays queued
        assert list(m.stream(prompt, n=0)) == []
        assert m.n_past == len(prompt) and m._pending == 0


def test_check_names_the_first_difference_and_how_close_it_was(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from ggc.cli import _check

    path = tiny_model("llama", "q8_0")
    with ggc.Model(path, ctx=256, batch=8, progress=None) as m:
        prompt = m.tokenize(PROMPT)
        ours = m.generate(prompt, n=6).tokens
    a = argparse.Namespace(temp=0.0, ctx=256, batch=8)
    assert _check(a, path, prompt, ours) == 0
    wrong = ours[:3] + [(ours[3] + 1) % 500] + ours[4:]
    assert _check(a, path, prompt, wrong) == 1
    err = capsys.readouterr().err
    assert f"check: FAIL at generated token 3: ggc {wrong[3]}, llama.cpp {ours[3]} (llama.cpp's logits: " in err
    assert "apart)" in err


def _bad_arch(tmp_path: Path) -> Path:
    """A real GGUF whose architecture llama.cpp does not know."""
    raw = tiny_model("llama", "f16").read_bytes()
    key = b"general.architecture"
    i = raw.index(key) + len(key) + 4  # then: value type u32 (8 = string), u64 length, bytes
    n = struct.unpack_from("<Q", raw, i)[0]
    p = tmp_path / "alien.gguf"
    p.write_bytes(raw[:i] + struct.pack("<Q", n) + b"zzzzz"[:n].ljust(n, b"z") + raw[i + 8 + n :])
    return p


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "not.gguf").write_bytes(b"this is not a model" * 10)
    model = str(tiny_model("llama", "f16"))
    cases = [
        (("run", str(tmp_path / "missing.gguf")), "missing.gguf: cannot open"),
        (("run", str(tmp_path / "not.gguf")), "not a GGUF file"),
        (("run", str(_bad_arch(tmp_path))), "llama.cpp could not load this model"),
        (("run", model, "-p", "word " * 300, "--ctx", "256"), "more than the context of 256"),
        (("run", model, "--target", "metal"), "unknown target 'metal'"),
    ]
    for args, msg in cases:
        r = run_ggc(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr[-800:])
        assert msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-800:])


def test_model_rejects_bad_settings() -> None:
    with pytest.raises(GgcError, match="batch"):
        ggc.Model(tiny_model("llama", "f16"), ctx=16, batch=32, progress=None)
