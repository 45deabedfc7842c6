"""bench/models.py: the random-weight benchmark models, in scaled-down variants, load and run in llama.cpp."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from tests.test_models import run_prompt

_spec = importlib.util.spec_from_file_location("bench_models", Path(__file__).parents[1] / "bench" / "models.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up while the module executes
_spec.loader.exec_module(bench)

QT = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def llama() -> object:
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = llama_cpp.llama_cpp
    lib.llama_backend_init()
    return lib


@pytest.mark.parametrize("name", list(bench.BENCH_MODELS))
def test_small_variant_runs_in_llama_cpp(llama, tmp_path: Path, name: str) -> None:
    m = bench.bench_model(name, bench.SMALL_SHAPES)
    path = bench.write_bench_model(name, tmp_path / "m.gguf", overrides=bench.SMALL_SHAPES)
    assert not list(tmp_path.glob("*.tmp"))
    reader = gguf.GGUFReader(path)
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == m.n_vocab
    assert reader.fields["general.file_type"].contents() == m.file_type
    want = {t.name: (m.output_type if t.name == "output.weight" else m.wtype) for t in reader.tensors}
    for t in reader.tensors:
        assert t.tensor_type == (QT.F32 if len(t.shape) == 1 else want[t.name]), t.name
        if len(t.shape) == 2:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
            assert np.isfinite(w).all() and abs(w.std() * np.sqrt(w.shape[-1]) - 1) < 0.05, t.name

    wb = bench.weight_bytes(path)
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert wb["token_embd_row"] == embd.n_bytes // m.n_vocab
    assert wb["per_token"] == wb["total"] - embd.n_bytes + wb["token_embd_row"]

    _, logits = run_prompt(llama, path, b"Hello world, the dog was in the sun.")
    for step in logits:
        assert np.isfinite(step).all() and step.std() > 0.1


def test_deterministic_across_threads_and_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "llama3.2-1b-q4_0"
    a = bench.write_bench_model(name, tmp_path / "a.gguf", overrides=bench.SMALL_SHAPES, threads=1).read_bytes()
    b = bench.write_bench_model(name, tmp_path / "b.gguf", overrides=bench.SMALL_SHAPES, threads=4).read_bytes()
    assert a == b
    monkeypatch.setattr(bench, "CHUNK_BYTES", 4096)  # many chunks per tensor: same layout, other draws
    c = bench.write_bench_model(name, tmp_path / "c.gguf", overrides=bench.SMALL_SHAPES).read_bytes()
    assert len(c) == len(a) and c != a
    assert len(gguf.GGUFReader(tmp_path / "c.gguf").tensors) == len(gguf.GGUFReader(tmp_path / "a.gguf").tensors)
