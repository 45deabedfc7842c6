"""The C target end to end: compile, build with make, verify every node against llama.cpp."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from ggc.backends.c.emit import compile_c
from ggc.capture.llama import LlamaSession, SessionOptions
from ggc.models.quantize import tiny_model
from ggc.models.tiny import ARCHS
from ggc.oracle.verify import verify_model
from ggc.runtime.cprogram import CProgram, build
from tests.util import run_ggc

QUANTS = ("f16", "q8_0", "q4_0", "q4_k_m")


def _assert_pass(res) -> None:  # noqa: ANN001
    bad = [(r.tensor.label(), r.tensor.op, r.nmse) for r in res.results if not r.ok]
    assert not bad, bad
    assert len(res.results) == len(res.graph.nodes)


@pytest.mark.parametrize("n_tokens", [1, 8], ids=["decode", "prefill"])
@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_verify_c_target(arch: str, quant: str, n_tokens: int) -> None:
    _assert_pass(verify_model(tiny_model(arch, quant), n_tokens, target="c"))


@pytest.mark.parametrize("config", ["no-flash-attn", "q8_0-cache"])
def test_verify_c_target_other_configurations(config: str) -> None:
    opts = SessionOptions(flash_attn=False) if config == "no-flash-attn" else SessionOptions(type_k="q8_0",
                                                                                             type_v="q8_0")
    for arch in ("llama", "gemma3"):
        _assert_pass(verify_model(tiny_model(arch, "q4_0"), 8, opts=opts, target="c"))


def _graph(arch: str = "llama", quant: str = "q4_k_m", n: int = 8):  # noqa: ANN202
    with LlamaSession(tiny_model(arch, quant)) as s:
        return s.capture(n)[0]


def test_release_and_debug_builds_agree(tmp_path: Path) -> None:
    """The release plan reuses scratch; it must compute exactly what the debug plan computes."""
    g = _graph("qwen3moe", "q4_0")
    model = tiny_model("qwen3moe", "q4_0")
    outs = []
    for debug in (False, True):
        rng = np.random.default_rng(0)  # the same inputs for both builds
        compiled = compile_c(g, tmp_path / f"p{int(debug)}", debug=debug)
        with CProgram(compiled) as prog:
            prog.load_weights(model)
            for t in g.leafs:
                if "input" in t.flags and compiled.plan.has_memory(t):
                    dtype = {"i32": np.int32, "i64": np.int64, "f16": np.float16}.get(t.type.name, np.float32)
                    if t.type.name in ("i32", "i64"):
                        data = rng.integers(0, 8, t.nelements).astype(dtype)
                    else:
                        data = rng.standard_normal(t.nelements).astype(dtype)
                    prog.set(t, data.tobytes())
            prog.run()
            outs.append([prog.get(t) for t in g.outputs()])
    assert outs[0] == outs[1]
    release, debug_ = (compile_c(g, tmp_path / f"s{d}", debug=d).plan for d in (False, True))
    assert release.region_size["scratch"] < debug_.region_size["scratch"]


def test_openmp_build_matches(tmp_path: Path) -> None:
    g = _graph("llama", "q8_0", 8)
    compiled = compile_c(g, tmp_path / "omp")
    results = []
    for openmp, threads in ((False, 1), (True, 2)):
        with CProgram(compiled, openmp=openmp) as prog:
            prog.load_weights(tiny_model("llama", "q8_0"))
            prog.set_threads(threads)
            for t in g.leafs:
                if "input" in t.flags and compiled.plan.has_memory(t):
                    prog.set(t, bytes(t.nbytes))
            prog.run()
            results.append(prog.get(g.outputs()[-1]))
        (tmp_path / "omp" / "libmodel.so").unlink()  # rebuild with the other flags
    assert results[0] == results[1]


def test_compile_command_writes_a_standalone_directory(tmp_path: Path) -> None:
    model = tiny_model("llama", "q4_0")
    assert run_ggc("export", str(model), "--tokens", "1", "-o", "g.ggraph", cwd=tmp_path).returncode == 0
    r = run_ggc("compile", "g.ggraph", "--target", "c", "-o", "prog", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = tmp_path / "prog"
    assert {"program.c", "Makefile", "README.md", "ggc_model.h", "ggc_gguf.c", "ggc_main.c", "kernels"} <= {
        p.name for p in d.iterdir()}
    m = subprocess.run(["make", "-s", "-C", str(d)], capture_output=True, text=True)
    assert m.returncode == 0, m.stderr
    # the program needs libc and libm alone
    deps = subprocess.run(["ldd", str(d / "model")], capture_output=True, text=True).stdout
    libs = {ln.split()[0] for ln in deps.splitlines() if "=>" in ln}
    assert {lib.split(".so")[0] for lib in libs} <= {"libc", "libm", "linux-vdso"}, libs
    (tmp_path / "tok.bin").write_bytes(np.array([1], np.int32).tobytes())
    (tmp_path / "pos.bin").write_bytes(np.array([0], np.int32).tobytes())
    run = subprocess.run([str(d / "model"), str(model), "-i", f"inp_tokens={tmp_path / 'tok.bin'}",
                          "-i", f"inp_pos={tmp_path / 'pos.bin'}", "-o", f"result_output={tmp_path / 'logits.bin'}"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    logits = np.frombuffer((tmp_path / "logits.bin").read_bytes(), np.float32)
    assert logits.shape == (510,) and np.isfinite(logits).all()
    bad = subprocess.run([str(d / "model"), str(tiny_model("llama", "q8_0"))], capture_output=True, text=True)
    assert bad.returncode == 2 and "the program expects q4_0" in bad.stderr


def test_build_reports_a_missing_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ggc.errors import GgcError

    compiled = compile_c(_graph("llama", "f16", 1), tmp_path / "p")
    monkeypatch.setenv("CC", "no-such-compiler")
    with pytest.raises(GgcError, match="C compiler 'no-such-compiler' not found"):
        build(compiled)


def test_verify_command_target_c() -> None:
    r = run_ggc("verify", str(tiny_model("gemma3", "q4_k_m")), "--tokens", "8", "--target", "c")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "chained" in r.stdout and "fused" in r.stdout and "PASS" in r.stdout
