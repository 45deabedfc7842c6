"""The commands a user types: demo, legacy import through export, dot of a captured model."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ggc.formats import ggraph
from ggc.formats.legacy_write import export_ggml
from ggc.ir.graph import Graph
from ggc.models.quantize import tiny_model
from ggc.oracle.rebuild import Rebuilt, leaf_source
from tests.util import run_ggc


def test_demo_is_the_main_job(tmp_path: Path) -> None:
    r = run_ggc("demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for n in (1, 8):
        for target in ("ggml", "c"):
            assert f"verify N={n} target {target}: 68/68 nodes match llama.cpp" in r.stdout, r.stdout
    assert "liveness lower bound" in r.stdout
    assert sorted(p.name for p in (tmp_path / "ggc-demo").iterdir()) == [
        "tiny-llama-f16-v1.t1.ggraph", "tiny-llama-f16-v1.t8.ggraph"]


def _compute(g: Graph) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with Rebuilt(g) as rb:
        rb.bind_leafs(leaf_source(g, None, {}))
        rb.run(lambda t, data: out.__setitem__(t.name, data))
    return out


@pytest.mark.parametrize("layout", ["v1-name32-noparams-src6-ndims-ptr", "v2-name64-params64-src10-flags"])
def test_export_imports_a_legacy_file_that_computes_the_same(tmp_path: Path, layout: str) -> None:
    from tests.test_legacy import build_graph

    g = build_graph()
    (tmp_path / "old.ggml").write_bytes(export_ggml(g, layout))
    r = run_ggc("export", "old.ggml", "-o", "old.ggraph", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    back = ggraph.load(tmp_path / "old.ggraph")
    assert _compute(back) == _compute(g)


def test_export_rejects_a_corrupt_legacy_file(tmp_path: Path) -> None:
    from tests.test_legacy import build_graph

    blob = export_ggml(build_graph(), "v1-name64-params64-src10")
    (tmp_path / "cut.ggml").write_bytes(blob[: len(blob) // 2])
    r = run_ggc("export", "cut.ggml", cwd=tmp_path)
    assert r.returncode == 2 and "cut.ggml" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.ggraph"))


def test_dot_of_a_captured_two_layer_model(tmp_path: Path) -> None:
    pytest.importorskip("shutil").which("dot") or pytest.skip("graphviz 'dot' is not installed")
    model = tiny_model("qwen3moe", "q4_0")
    assert run_ggc("export", str(model), "--tokens", "8", "-o", "m.ggraph", cwd=tmp_path).returncode == 0
    r = run_ggc("dot", "m.ggraph", "-o", "m.svg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    g = ggraph.load(tmp_path / "m.ggraph")
    svg = ET.parse(tmp_path / "m.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    nodes = [e for e in svg.iter(f"{ns}g") if e.get("class") == "node"]
    clusters = {e.findtext(f"{ns}title") for e in svg.iter(f"{ns}g") if e.get("class") == "cluster"}
    assert len(nodes) == len(g.tensors)
    assert {"cluster_layer_0", "cluster_layer_1"} <= clusters
