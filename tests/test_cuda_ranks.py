"""Tensor-parallel CUDA programs: one process a GPU, their all-reduces through NCCL.

Without a GPU: the 2-rank program of a tiny model builds with nvcc against NCCL (where nvcc and
NCCL are installed; `pip install nvidia-nccl-cu13` gives NCCL), and the launcher's errors are
clear. With 2 GPUs (the GPU machine: nvidia-h200-x2): every node of the tiny models against
llama.cpp and the 1-rank program, and 64 greedy tokens equal to llama.cpp's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ggc.backends.cuda.abi import driver_devices, find_nccl, find_nvcc
from ggc.errors import GgcError
from ggc.ir.graph import Graph, Tensor
from ggc.ir.types import contiguous_strides, get_type
from ggc.models.quantize import tiny_model
from ggc.models.tiny import ARCHS
from ggc.runtime.ranks import launch_ranks, rank_env
from tests.test_run import PROMPT
from tests.util import run_ggc

QUANTS = ("f16", "q8_0", "q4_0", "q4_k_m")
needs_build = pytest.mark.skipif(find_nvcc() is None or find_nccl() is None,
                                 reason="needs nvcc and NCCL (pip install nvidia-nccl-cu13)")
needs_a_gpu = pytest.mark.skipif(find_nvcc() is None or find_nccl() is None or not driver_devices(),
                                 reason="needs nvcc, NCCL and a CUDA GPU (runs on the GPU machine)")
needs_2_gpus = pytest.mark.skipif(find_nvcc() is None or len(driver_devices()) < 2,
                                  reason="needs nvcc and 2 CUDA GPUs (runs on the GPU machine, nvidia-h200-x2)")


def two_rank_program(tmp_path: Path, exact: bool):  # noqa: ANN201 - CompiledC
    from ggc.backends.cuda.emit import compile_cuda
    from ggc.capture.llama import LlamaSession, SessionOptions
    from ggc.compiler.partition import partition

    with LlamaSession(tiny_model("llama", "q4_0"), SessionOptions(n_ctx=256, n_batch=8)) as s:
        graphs = [s.capture(8, 1)[0], s.capture(1, 1)[0]]
    local = [p.graph for p in partition(graphs, 2, exact)]
    return compile_cuda(local, tmp_path / "prog", graph_names=["prefill", "decode"], archs=("90",))


@needs_build
def test_two_rank_program_builds_against_nccl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ggc.runtime.cprogram import build

    monkeypatch.setenv("GGC_CUDA_ARCH", "sm_90")
    compiled = two_rank_program(tmp_path, exact=False)
    assert compiled.ranks == 2
    program = (compiled.out / "program.cu").read_text()
    assert "GGC_RANKS = 2" in program
    # Megatron's scheme: an all-reduce after the attention output and the FFN down projection, in
    # each of 2 layers of each of the 2 graphs
    reduces = [line for line in program.splitlines() if "ggc_cuda_op_all_reduce(&" in line]
    assert len(reduces) == 8 and all("attn_out" in x or "ffn_out" in x for x in reduces), reduces
    assert "NCCL ?= 1" in (compiled.out / "Makefile").read_text()
    assert "GGC_NCCL_ID" in (compiled.out / "README.md").read_text()
    build(compiled, target="all")
    needed = subprocess.run(["readelf", "-d", str(compiled.out / "libmodel.so")], capture_output=True, text=True).stdout
    assert "libnccl.so.2" in needed


@needs_a_gpu
def test_the_program_says_how_to_start_its_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2-rank program created in a process that no launcher started, or as a rank whose GPU
    this machine lacks: a clear error, before NCCL is asked for anything."""
    from ggc.runtime.cprogram import CProgram

    compiled = two_rank_program(tmp_path, exact=True)
    for v in ("GGC_RANK", "GGC_RANKS", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(GgcError, match="built for 2 ranks: start it with ggc run/verify --ranks 2"):
        CProgram(compiled)
    n = len(driver_devices())
    if n < 2:
        monkeypatch.setenv("GGC_RANK", "1")
        monkeypatch.setenv("GGC_RANKS", "2")
        with pytest.raises(GgcError, match=f"rank 1 needs GPU 1, but this machine has {n}"):
            CProgram(compiled)


def collectives_graph() -> Graph:
    """z = ALL_GATHER(ALL_REDUCE(x)) along dim 1, in a program of one rank."""
    f32 = get_type("f32")
    ne = (64, 3, 1, 1)
    x = Tensor(0, f32, ne, contiguous_strides(f32, ne), flags=frozenset({"input"}), name="x")  # type: ignore[arg-type]
    y = Tensor(1, f32, ne, x.nb, op="ALL_REDUCE", src=[x], name="y")  # type: ignore[arg-type]
    z = Tensor(2, f32, ne, x.nb, op="ALL_GATHER", params={"dim": 1}, src=[y], name="z",  # type: ignore[arg-type]
               flags=frozenset({"output"}))
    g = Graph([x, y, z], meta={"n_tokens": 1})
    g.validate()
    return g


@needs_a_gpu
def test_collectives_through_an_nccl_communicator_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The NCCL path of the runtime on one GPU (GGC_NCCL_ONE=1): the communicator set up, the
    collectives queued through NCCL by the kernels, run one by one and recorded in a CUDA graph."""
    from ggc.backends.cuda.emit import compile_cuda
    from ggc.runtime.cprogram import CProgram, build

    monkeypatch.setenv("GGC_NCCL_ONE", "1")
    g = collectives_graph()
    compiled = compile_cuda(g, tmp_path / "prog", archs=("90",))
    build(compiled, nccl=True)
    x = np.random.default_rng(5).standard_normal(g.by_name("x").nelements).astype(np.float32)
    with CProgram(compiled) as prog:
        for _ in range(2):  # recorded, then replayed
            prog.set(g.by_name("x"), x.tobytes())
            prog.run()
            assert np.array_equal(prog.get_f32(g.by_name("z")).reshape(-1), x)
        prog.set(g.by_name("x"), (2 * x).tobytes())
        for i in range(len(compiled.plan.groups)):
            prog.run_group(i)
        assert np.array_equal(prog.get_f32(g.by_name("z")).reshape(-1), 2 * x)


def test_launcher_needs_a_gpu_a_rank() -> None:
    n = len(driver_devices())
    with pytest.raises(GgcError, match=f"{n + 1} ranks on the CUDA target need {n + 1} GPUs"):
        launch_ranks(n + 1, [sys.executable, "-c", "pass"], "cuda")


def test_rank_env_reads_the_launchers_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in ("GGC_RANK", "GGC_RANKS", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE"):
        monkeypatch.delenv(v, raising=False)
    assert rank_env() is None
    monkeypatch.setenv("GGC_RANK", "1")
    monkeypatch.setenv("GGC_RANKS", "2")
    assert rank_env() == (1, 2)


@needs_build
def test_cli_compiles_and_builds_for_two_gpus(tmp_path: Path) -> None:
    g = tmp_path / "d.ggraph"
    assert run_ggc("export", str(tiny_model("llama", "q4_0")), "--tokens", "1", "-o", str(g)).returncode == 0
    r = run_ggc("compile", str(g), "--ranks", "2", "--partial-sums", "--target", "cuda", "-o", str(tmp_path / "p"),
                "--build")
    assert r.returncode == 0, r.stderr
    assert "partitioned for 2 ranks" in r.stdout and "(NCCL)" in r.stdout and "all-reduces" in r.stdout
    assert (tmp_path / "p" / "model").exists() and "ALL_REDUCE" in (tmp_path / "p" / "rank.ggraph").read_text()


def test_verify_on_more_gpus_than_there_are_stops_first() -> None:
    n = len(driver_devices())
    r = run_ggc("verify", str(tiny_model("llama", "q4_0")), "--tokens", "1", "--ranks", str(n + 1), "--target", "cuda")
    if find_nvcc() is None or not n:  # no GPU: the CUDA evaluator cannot run at all
        assert r.returncode == 2 and "Traceback" not in r.stderr
    else:
        assert r.returncode == 2 and f"need {n + 1} GPUs, one a rank; this machine has {n}" in r.stderr, r.stderr


def test_ranks_need_c_or_cuda_in_verify() -> None:
    r = run_ggc("verify", str(tiny_model("llama", "q4_0")), "--tokens", "1", "--ranks", "2", "--target", "ggml")
    assert r.returncode == 2 and "--target c (MPI ranks) or cuda" in r.stderr and "Traceback" not in r.stderr


@needs_2_gpus
@pytest.mark.parametrize("n_tokens", [1, 8], ids=["decode", "prefill"])
@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_verify_two_gpus(arch: str, quant: str, n_tokens: int) -> None:
    verify_two_gpus(arch, quant, n_tokens, exact=True)


@needs_2_gpus
@pytest.mark.parametrize("arch", ARCHS)
def test_verify_two_gpus_summing_partials(arch: str) -> None:
    verify_two_gpus(arch, "q8_0", 8, exact=False)


def verify_two_gpus(arch: str, quant: str, n_tokens: int, exact: bool) -> None:
    from ggc.oracle.ranks import ranks_evaluator
    from ggc.oracle.verify import verify_model

    res = verify_model(tiny_model(arch, quant), n_tokens, target=ranks_evaluator(2, exact, target="cuda"))
    bad = [(r.tensor.label(), r.tensor.op, r.nmse, r.chained) for r in res.results if not r.ok]
    assert not bad, bad
    assert any(r.note != "fused" for r in res.results)


@needs_2_gpus
@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("scheme", [[], ["--partial-sums"]], ids=["exact", "partial-sums"])
def test_run_check_two_gpus(arch: str, quant: str, scheme: list[str], tmp_path: Path) -> None:
    r = run_ggc("run", str(tiny_model(arch, quant)), "-p", PROMPT, "-n", "64", "--ctx", "512", "--batch", "16",
                "--check", "--ranks", "2", "--target", "cuda", *scheme, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "check: all" in r.stdout and "generated tokens equal" in r.stdout, r.stdout
    assert r.stdout.count("check: all") == 1 and ", 2 ranks" in r.stdout and "target cuda" in r.stdout
