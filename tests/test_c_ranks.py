"""Tensor parallelism on the C target, end to end: a program of two ranks built with mpicc and run
under mpirun, one process a rank, each loading its share of a split weight from a real GGUF.

The graph is y = A x with A of GGUF shape [K, N] (f32 or quantized): split along dimension 0 (the
length of the dot products), each rank computes a partial product over its half of x and
z = ALL_REDUCE(y) sums them; split along dimension 1 (rows), each rank computes its own rows of y.
A small Python worker runs on every rank through CProgram (tests/test_c_ranks.py's graph is the
program's), and the results are compared with numpy's product of the whole tensor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from ggc.backends.c.emit import CompiledC, compile_c
from ggc.ir.graph import GgufData, Graph, Tensor
from ggc.ir.types import contiguous_strides, get_type
from ggc.runtime.cprogram import build
from ggc.runtime.ranks import mpirun_command

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None or shutil.which("mpicc") is None,
                                reason="OpenMPI is not installed (mpirun, mpicc): scripts/setup.sh installs it")

REPO = Path(__file__).resolve().parents[1]
K, N, RANKS = 64, 8, 2
QTYPES = {"f32": gguf.GGMLQuantizationType.F32, "q8_0": gguf.GGMLQuantizationType.Q8_0,
          "q4_0": gguf.GGMLQuantizationType.Q4_0}

WORKER = """\
import sys

import numpy as np

from ggc.backends.c.emit import compile_c
from ggc.errors import GgcError
from ggc.runtime.cprogram import CProgram
from tests.test_c_ranks import graph

wtype, split, out, model, xfile, result = sys.argv[1:]
g = graph(wtype, int(split))
try:
    with CProgram(compile_c(g, out, reuse_existing=True)) as prog:  # built by the test already
        prog.load_weights(model)
        x, xt, r = np.load(xfile), g.by_name("x"), prog.rank
        prog.set(xt, x[r * xt.nelements : (r + 1) * xt.nelements].tobytes() if split == "0" else x.tobytes())
        prog.run()
        np.save(f"{result}.{r}.npy", prog.get_f32(g.outputs()[0]))
except GgcError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
"""


def graph(wtype: str, split: int) -> Graph:
    """y = A x on one rank of two: A [K, N] in the GGUF, this rank's half along `split`."""
    wt, f32 = get_type(wtype), get_type("f32")
    a_ne = (K // RANKS, N, 1, 1) if split == 0 else (K, N // RANKS, 1, 1)
    x_ne = (a_ne[0], 1, 1, 1)
    y_ne = (a_ne[1], 1, 1, 1)
    a = Tensor(0, wt, a_ne, contiguous_strides(wt, a_ne), flags=frozenset({"weight"}), name="a",  # type: ignore[arg-type]
               data=GgufData("a", split))
    x = Tensor(1, f32, x_ne, contiguous_strides(f32, x_ne), flags=frozenset({"input"}), name="x")  # type: ignore[arg-type]
    y = Tensor(2, f32, y_ne, contiguous_strides(f32, y_ne), op="MUL_MAT", src=[a, x], name="y")  # type: ignore[arg-type]
    tensors = [a, x, y]
    if split == 0:  # partial sums: add them up over the ranks
        tensors.append(Tensor(3, f32, y_ne, y.nb, op="ALL_REDUCE", src=[y], name="z"))
    tensors[-1].flags = frozenset({"output"})
    g = Graph(tensors, meta={"ranks": RANKS, "n_tokens": 1})
    g.validate()
    return g


def write_gguf(path: Path, wtype: str, ne: tuple[int, int] = (K, N)) -> np.ndarray:
    """A GGUF holding "a" of shape ne (random, quantized to wtype); returns its values as numpy's
    [ne1, ne0] f32, dequantized."""
    a = np.random.default_rng(3).standard_normal((ne[1], ne[0])).astype(np.float32)
    w = gguf.GGUFWriter(str(path), "ggc-ranks-test")
    qtype = QTYPES[wtype]
    data = a if wtype == "f32" else gguf.quants.quantize(a, qtype)
    w.add_tensor("a", data, raw_dtype=None if wtype == "f32" else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return a if wtype == "f32" else gguf.quants.dequantize(data, qtype)


def activations(x: np.ndarray, wtype: str) -> np.ndarray:
    """x as the matrix product sees it: quantized weights multiply q8_0 activations (ggml's vec_dot_type)."""
    if wtype == "f32":
        return x
    q8 = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.dequantize(gguf.quants.quantize(x, q8), q8)


def program(tmp_path: Path, wtype: str, split: int) -> CompiledC:
    compiled = compile_c(graph(wtype, split), tmp_path / "prog")
    build(compiled)  # once, before the ranks start
    return compiled


def run_ranks(tmp_path: Path, wtype: str, split: int, model: Path, x: np.ndarray, n: int = RANKS
              ) -> tuple[subprocess.CompletedProcess, list[np.ndarray]]:
    """Run the worker on n ranks under mpirun (n = 0: one plain process, no mpirun); each rank's result."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    np.save(tmp_path / "x.npy", x)
    result = tmp_path / "z"
    cmd = [*(mpirun_command(n) if n else []), sys.executable, str(worker), wtype, str(split), str(tmp_path / "prog"),
           str(model), str(tmp_path / "x.npy"), str(result)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    outs = [np.load(f"{result}.{k}.npy") for k in range(RANKS) if Path(f"{result}.{k}.npy").exists()]
    return r, outs


def product_on_ranks(tmp_path: Path, wtype: str, split: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A @ x with A split along `split`, on RANKS processes: the whole product (from numpy, on the
    activations as the kernel quantizes them) and each rank's result."""
    program(tmp_path, wtype, split=split)
    a = write_gguf(tmp_path / "a.gguf", wtype)
    x = np.random.default_rng(seed).standard_normal(K).astype(np.float32)
    r, outs = run_ranks(tmp_path, wtype, split, tmp_path / "a.gguf", x)
    assert r.returncode == 0 and len(outs) == RANKS, r.stdout + r.stderr
    return a.astype(np.float64) @ activations(x, wtype).astype(np.float64), outs


@pytest.mark.parametrize("wtype", ["f32", "q8_0", "q4_0"])
def test_split_columns_all_reduce(tmp_path: Path, wtype: str) -> None:
    """Each rank multiplies its half of the columns of A by its half of x; ALL_REDUCE sums them:
    every rank gets the whole product, the same bits on both."""
    # each rank's q8_0 activations are the whole x's blocks: the split is on a block boundary
    want, z = product_on_ranks(tmp_path, wtype, 0, seed=5)
    np.testing.assert_allclose(z[0], want, rtol=1e-5, atol=1e-4)
    assert z[0].tobytes() == z[1].tobytes()


@pytest.mark.parametrize("wtype", ["f32", "q8_0"])
def test_split_rows(tmp_path: Path, wtype: str) -> None:
    """Each rank holds N / 2 rows of A and computes those outputs; nothing to reduce."""
    want, y = product_on_ranks(tmp_path, wtype, 1, seed=6)
    for k in range(RANKS):
        np.testing.assert_allclose(y[k], want[k * N // RANKS : (k + 1) * N // RANKS], rtol=1e-5, atol=1e-4)


def test_one_process_is_a_clear_error(tmp_path: Path) -> None:
    program(tmp_path, "f32", split=0)
    write_gguf(tmp_path / "a.gguf", "f32")
    for n in (0, 1):  # a plain process, and mpirun -n 1
        r, z = run_ranks(tmp_path, "f32", 0, tmp_path / "a.gguf", np.zeros(K, np.float32), n=n)
        assert r.returncode != 0 and not z
        assert "this program is built for 2 ranks: run it with mpirun -n 2 (it runs on 1)" in r.stderr, r.stderr


def test_gguf_shape_not_split_is_a_clear_error(tmp_path: Path) -> None:
    """A GGUF holding one rank's share (the local shape) instead of the whole tensor."""
    program(tmp_path, "f32", split=0)
    write_gguf(tmp_path / "a.gguf", "f32", ne=(K // RANKS, N))
    r, z = run_ranks(tmp_path, "f32", 0, tmp_path / "a.gguf", np.zeros(K, np.float32))
    assert r.returncode != 0 and not z
    assert ("tensor 'a' has shape [32, 8, 1, 1], the program expects [64, 8, 1, 1] (this rank's [32] along "
            "dimension 0, times 2 ranks)") in r.stderr, r.stderr


def test_cli_under_mpirun(tmp_path: Path) -> None:
    """The generated CLI: every rank reads the same input file, rank 0 alone reports and writes."""
    compiled = program(tmp_path, "f32", split=0)
    build(compiled, target="model")
    a = write_gguf(tmp_path / "a.gguf", "f32")
    x = np.random.default_rng(7).standard_normal(K // RANKS).astype(np.float32)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    cmd = [*mpirun_command(RANKS), str(compiled.out / "model"), str(tmp_path / "a.gguf"), "-i",
           f"x={tmp_path / 'x.bin'}", "-o", f"z={tmp_path / 'z.bin'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.count("run(s)") == 1, r.stderr
    z = np.frombuffer((tmp_path / "z.bin").read_bytes(), np.float32)
    half = K // RANKS
    np.testing.assert_allclose(z, a[:, :half] @ x + a[:, half:] @ x, rtol=1e-5, atol=1e-5)


def test_built_without_mpi_is_a_clear_error(tmp_path: Path) -> None:
    compiled = program(tmp_path, "f32", split=0)
    write_gguf(tmp_path / "a.gguf", "f32")
    r = subprocess.run(["make", "-s", "model", "MPI=0", "CC=gcc"], cwd=compiled.out, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([str(compiled.out / "model"), str(tmp_path / "a.gguf")], capture_output=True, text=True)
    assert r.returncode == 2 and "built for 2 ranks but without MPI: rebuild with make MPI=1" in r.stderr, r.stderr
