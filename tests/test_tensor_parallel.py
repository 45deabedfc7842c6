"""Tensor-parallel C programs on 2 MPI ranks, end to end: every node of every tiny model against
llama.cpp and the 1-rank program, and 64 greedy tokens equal to llama.cpp's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ggc.models.quantize import tiny_model
from ggc.models.tiny import ARCHS
from ggc.oracle.ranks import ranks_evaluator
from ggc.oracle.verify import verify_model
from tests.test_run import PROMPT
from tests.util import run_ggc

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None or shutil.which("mpicc") is None,
                                reason="OpenMPI (mpirun, mpicc) is not installed; scripts/setup.sh installs it")
QUANTS = ("f16", "q8_0", "q4_0", "q4_k_m")


@pytest.mark.parametrize("n_tokens", [1, 8], ids=["decode", "prefill"])
@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_verify_two_ranks(arch: str, quant: str, n_tokens: int) -> None:
    res = verify_model(tiny_model(arch, quant), n_tokens, target=ranks_evaluator(2))
    bad = [(r.tensor.label(), r.tensor.op, r.nmse, r.chained) for r in res.results if not r.ok]
    assert not bad, bad
    checked = [r for r in res.results if r.note != "fused"]
    # each also against the 1-rank program, where that keeps the node (its fusion groups differ)
    assert checked and sum(r.chained is not None for r in checked) >= 0.9 * len(checked)


@pytest.mark.parametrize("arch", ARCHS)
def test_verify_two_ranks_summing_partials(arch: str) -> None:
    # Megatron's scheme: partial sums and ALL_REDUCE; each group still within test-backend-ops' limits
    res = verify_model(tiny_model(arch, "q8_0"), 8, target=ranks_evaluator(2, exact=False))
    assert all(r.ok for r in res.results), [(r.tensor.label(), r.nmse, r.chained) for r in res.results if not r.ok]


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_run_check_two_ranks(arch: str, quant: str, tmp_path: Path) -> None:
    r = run_ggc("run", str(tiny_model(arch, quant)), "-p", PROMPT, "-n", "64", "--ctx", "256", "--batch", "16",
                "--check", "--ranks", "2", cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "check: all" in r.stdout and "generated tokens equal" in r.stdout, r.stdout
    assert r.stdout.count("check: all") == 1  # rank 0 speaks for both
    assert ", 2 ranks" in r.stdout


def test_compile_for_ranks_writes_the_rank_graph(tmp_path: Path) -> None:
    g = tmp_path / "d.ggraph"
    assert run_ggc("export", str(tiny_model("llama", "q4_0")), "--tokens", "1", "-o", str(g)).returncode == 0
    r = run_ggc("compile", str(g), "--ranks", "2", "-o", str(tmp_path / "prog"), "--build")
    assert r.returncode == 0, r.stderr
    assert "15 of 21 weights split" in r.stdout and "mpirun -n 2" in r.stdout
    assert "ALL_GATHER" in (tmp_path / "prog" / "rank.ggraph").read_text()
    assert (tmp_path / "prog" / "model").exists()


def test_ranks_on_ggml_are_a_clear_error() -> None:
    r = run_ggc("verify", str(tiny_model("llama", "q4_0")), "--tokens", "1", "--ranks", "2")
    assert r.returncode == 2 and "--target c" in r.stderr and "Traceback" not in r.stderr
