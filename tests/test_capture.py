"""Capture from llama.cpp and the ggml oracle, on every tiny model and quant variant."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggc.capture.llama import LlamaSession, SessionOptions
from ggc.capture.walk import compare_live
from ggc.formats import ggraph
from ggc.formats.gguf_file import read_gguf
from ggc.models.quantize import tiny_model
from ggc.models.tiny import ARCHS
from ggc.oracle.targets import eval_ggml
from ggc.oracle.verify import verify_model
from tests.util import run_ggc

QUANTS = ("f16", "q8_0", "q4_0", "q4_k_m")
CASES = [(a, q) for a in ARCHS for q in QUANTS]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    d = tmp_path_factory.mktemp("models")
    return {(a, q): tiny_model(a, q, cache_dir=d) for a, q in CASES}


@pytest.mark.parametrize("n_tokens", [1, 8], ids=["decode", "prefill"])
@pytest.mark.parametrize("arch,quant", CASES)
def test_verify_every_node(models: dict, arch: str, quant: str, n_tokens: int) -> None:
    res = verify_model(models[arch, quant], n_tokens)
    assert len(res.results) == len(res.graph.nodes) > 40
    bad = [(r.tensor.label(), r.tensor.op, r.nmse) for r in res.results if not r.ok]
    assert not bad, bad


@pytest.mark.parametrize("n_tokens", [1, 8], ids=["decode", "prefill"])
@pytest.mark.parametrize("arch,quant", CASES)
def test_round_trip_and_live_graph(models: dict, arch: str, quant: str, n_tokens: int) -> None:
    path = models[arch, quant]
    gguf_names = {t.name: t for t in read_gguf(path).tensors}
    with LlamaSession(path) as s:
        graph, _ = s.capture(n_tokens)
        text = ggraph.write(graph)
        parsed = ggraph.parse(text)
        assert ggraph.write(parsed) == text
        assert compare_live(s.g, parsed, s.last_cgraph) == []
    roles = {"weight": 0, "state": 0, "input": 0}
    for t in parsed.leafs:
        if "weight" in t.flags:
            roles["weight"] += 1
            w = gguf_names[t.data.name]
            assert (w.type, w.ne) == (t.type, t.ne), t.name
        if "state" in t.flags:
            roles["state"] += 1
            assert t.name.startswith("cache_"), t.name
        if "input" in t.flags:
            roles["input"] += 1
    assert roles["weight"] >= 10 and roles["state"] >= 4 and roles["input"] >= 4
    names = {t.name for t in parsed.leafs if "input" in t.flags}
    assert {"inp_tokens", "inp_pos"} <= names
    assert any("kq_mask" in n for n in names) and any("k_idxs" in n for n in names)


CONFIGS = {
    "no-flash-attn": SessionOptions(flash_attn=False),
    "q8_0-cache": SessionOptions(type_k="q8_0", type_v="q8_0"),
    "ctx-512": SessionOptions(n_ctx=512),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("arch", ARCHS)
def test_verify_other_configurations(models: dict, arch: str, config: str) -> None:
    for n_tokens in (1, 8):
        res = verify_model(models[arch, "q4_0"], n_tokens, opts=CONFIGS[config])
        bad = [(r.tensor.label(), r.tensor.op, r.nmse) for r in res.results if not r.ok]
        assert not bad, bad


def test_verify_detects_a_wrong_graph(models: dict) -> None:
    """The check can fail: the same graph with one changed op param must not pass."""

    def perturbed(graph, gguf, leafs, expected):  # noqa: ANN001 - an Evaluator
        rope = next(t for t in graph.nodes if t.op == "ROPE")
        rope.params["freq_base"] = rope.params["freq_base"] * 2
        return eval_ggml(graph, gguf, leafs, expected)

    res = verify_model(models["llama", "f16"], 8, target=perturbed)
    failed = [r for r in res.results if not r.ok]
    assert failed and failed[0].tensor.op == "ROPE"
    assert not res.ok


def test_verify_rejects_a_graph_file_that_does_not_match(models: dict, tmp_path: Path) -> None:
    path = models["llama", "f16"]
    with LlamaSession(path) as s:
        graph, _ = s.capture(1)
    next(t for t in graph.nodes if t.op == "RMS_NORM").params["eps"] = 0.5
    out = tmp_path / "g.ggraph"
    ggraph.save(graph, out)
    r = run_ggc("verify", str(path), "--graph", str(out))
    assert r.returncode == 2 and "not the one llama.cpp builds" in r.stderr and "Traceback" not in r.stderr



def test_cli_export_then_verify(models: dict, tmp_path: Path) -> None:
    path = models["qwen2", "q4_0"]
    out = tmp_path / "q.ggraph"
    r = run_ggc("export", str(path), "--tokens", "8", "-o", str(out))
    assert r.returncode == 0, r.stderr
    g = ggraph.load(out)
    assert g.meta["arch"] == "qwen2" and g.meta["n_tokens"] == 8
    r = run_ggc("verify", str(path), "--tokens", "8", "--graph", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert f"{len(g.nodes)} passed, 0 failed" in lines
    assert sum(1 for ln in lines if ln.startswith("%")) == len(g.nodes)  # the table shows every node


def test_cli_bad_inputs_exit_2(tmp_path: Path, models: dict) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"hello, this is not a model at all" * 4)
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(models["llama", "f16"].read_bytes()[:5000])
    huge_count = tmp_path / "h.gguf"
    huge_count.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1 << 60).to_bytes(8, "little") + bytes(16))
    for args, msg in [
        (("export", str(tmp_path / "missing.gguf")), "no such file"),
        (("export", str(not_gguf)), "not a GGUF file"),
        (("export", str(truncated)), "truncated"),
        (("export", str(huge_count)), "implausible counts"),
        (("verify", str(not_gguf)), "not a GGUF file"),
        (("export", str(models["llama", "f16"]), "--tokens", "0"), "--tokens must be"),
    ]:
        r = run_ggc(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert not list(tmp_path.glob("*.ggraph")), args  # nothing half-written
