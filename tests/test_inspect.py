"""ggc.inspect: the text summary (`ggc show`) and the Graphviz drawing (`ggc dot`) of a toy two-layer graph."""

from __future__ import annotations

import re
import shutil
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ggc.errors import GgcError
from ggc.formats import ggraph
from ggc.inspect import human_bytes, layer_of, render, summarize, to_dot
from ggc.ir.graph import Graph

# Two llama-like layers: norm, matmul with a q4_K weight, a write into a KV-cache view, residual add.
# "data=@" binds a weight to the GGUF tensor of its own name (keeps the lines short).
# Sizes: q4_K [256,256] = 36864 B; f32 [256,2] = 2048 B; cache_k_l0 f32 [256,4] = 4096 B; cache_k_l1 f16 2048 B.
_TOY = r"""ggraph 1
meta arch="llama"
meta n_tokens=2
meta n_kv=4
%0 = NONE f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] flags=input name="inp_embd"
%1 = NONE f32 ne=[256,1,1,1] nb=[4,1024,1024,1024] flags=weight data=@ name="blk.0.attn_norm.weight"
%2 = NONE q4_K ne=[256,256,1,1] nb=[144,144,36864,36864] flags=weight data=@ name="blk.0.attn_q.weight"
%3 = NONE f32 ne=[256,4,1,1] nb=[4,1024,4096,4096] flags=state name="cache_k_l0"
%4 = RMS_NORM f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] src=[%0] params={eps=1e-05} name="norm-0"
%5 = MUL f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] src=[%4,%1] name="attn_norm-0"
%6 = MUL_MAT f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] src=[%2,%5] name="Qcur-0"
%7 = VIEW f32 ne=[256,2,1,1] nb=[4,1024,4096,4096] src=[%3] view=%3+0 params={offset=0} name="cache_k_l0 (view)"
%8 = CPY f32 ne=[256,2,1,1] nb=[4,1024,4096,4096] src=[%6,%7] view=%3+0 name="cache_k_l0 (view) (copy of Qcur-0)"
%9 = ADD f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] src=[%6,%0] name="l_out-0"
%10 = NONE f32 ne=[256,1,1,1] nb=[4,1024,1024,1024] flags=weight data=@ name="blk.1.attn_norm.weight"
%11 = NONE q4_K ne=[256,256,1,1] nb=[144,144,36864,36864] flags=weight data=@ name="blk.1.attn_q.weight"
%12 = NONE f16 ne=[256,4,1,1] nb=[2,512,2048,2048] flags=state name="cache_k_l1"
%13 = RMS_NORM f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] src=[%9] params={eps=1e-05} name="norm-1"
%14 = MUL f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] src=[%13,%10] name="attn_norm-1"
%15 = MUL_MAT f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] src=[%11,%14] name="Qcur-1"
%16 = VIEW f16 ne=[256,2,1,1] nb=[2,512,2048,2048] src=[%12] view=%12+1024 params={offset=1024} name="cache_k_l1 (view)"
%17 = CPY f16 ne=[256,2,1,1] nb=[2,512,2048,2048] src=[%15,%16] view=%12+1024 name="cache_k_l1 (view) (copy of Qcur-1)"
%18 = ADD f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] src=[%15,%9] name="l_out-1"
%19 = NONE f32 ne=[256,1,1,1] nb=[4,1024,1024,1024] flags=weight data=@ name="output_norm.weight"
%20 = NONE f32 ne=[1,1,1,1] nb=[4,4,4,4] data=hex:0000803f name="odd \"q\" \\ <x>"
%21 = RMS_NORM f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] src=[%18] params={eps=1e-05} name="norm"
%22 = MUL f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] src=[%21,%19] name="result_norm"
%23 = MUL f32 ne=[256,2,1,1] nb=[4,1024,2048,2048] src=[%22,%20] flags=output name="result_output"
"""
TOY = re.sub(r'data=@ name="([^"]*)"', r'data=gguf:"\1" name="\1"', _TOY)
LAYER0 = set(range(1, 10))
LAYER1 = set(range(10, 19))
HAVE_DOT = shutil.which("dot") is not None


@pytest.fixture()
def toy() -> Graph:
    g = ggraph.parse(TOY, "toy.ggraph")
    g.validate()  # the fixture itself must be a valid graph, or the tests prove nothing
    return g


def _section(text: str, title: str) -> list[str]:
    """The indented lines under a `title:` heading of the summary."""
    lines = text.splitlines()
    start = lines.index(f"{title}:") + 1
    out = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        out.append(line.strip())
    return out


# ---------------------------------------------------------------- summary


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 75 * 1024, 3 << 20, 5 << 30)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "75.0 KiB", "3.0 MiB", "5.0 GiB"]


def test_summary_header_and_ops(toy: Graph) -> None:
    text = summarize(toy)
    assert text.splitlines()[0] == "graph: 24 tensors (15 nodes, 9 leafs)"
    assert "meta: arch=llama n_tokens=2 n_kv=4" in text
    ops = [line.split() for line in _section(text, "nodes by op")]
    # By count, descending; ties by name.
    assert ops == [["MUL", "4"], ["RMS_NORM", "3"], ["ADD", "2"], ["CPY", "2"], ["MUL_MAT", "2"], ["VIEW", "2"]]


def test_summary_bytes_by_role_and_type(toy: Graph) -> None:
    mem = [re.sub(r"\s+", " ", line) for line in _section(summarize(toy), "memory by role")]
    assert mem == [
        "weights 75.0 KiB (5 tensors)",
        "q4_K 72.0 KiB (2)",
        "f32 3.0 KiB (3)",
        "state 6.0 KiB (2 tensors)",
        "f32 4.0 KiB (1)",
        "f16 2.0 KiB (1)",
        "inputs 2.0 KiB (1 tensor)",
        "f32 2.0 KiB (1)",
        "intermediates 22.0 KiB (11 tensors)",  # 11 non-view nodes of 2048 B; the 2 VIEWs and 2 CPYs own nothing
        "f32 22.0 KiB (11)",
        "constants 4 B (1 tensor)",
        "f32 4 B (1)",
        "total 105.0 KiB",
        "views: 4 tensors, counted nowhere (they own no memory: they alias their parent)",
    ]


def test_summary_io_state_and_largest(toy: Graph) -> None:
    text = summarize(toy, top=3)
    assert _section(text, "inputs") == ["%0 inp_embd  f32 [256, 2]"]
    assert _section(text, "outputs") == ["%23 result_output  f32 [256, 2]"]
    assert _section(text, "state") == ["%3 cache_k_l0  f32 [256, 4]", "%12 cache_k_l1  f16 [256, 4]"]
    rows = [line.split() for line in _section(text, "largest tensors (top 3, views excluded)")]
    assert rows[0] == ["id", "name", "op", "role", "type", "shape", "bytes"]
    assert [r[0] for r in rows[1:]] == ["%2", "%11", "%3"]  # by size, ties by id
    assert rows[1][-2:] == ["36.0", "KiB"]


def test_summary_outputs_fall_back_to_last_node_and_is_deterministic(toy: Graph) -> None:
    toy.tensors[-1].flags = frozenset()
    text = summarize(toy)
    assert _section(text, "outputs") == ["%23 result_output  f32 [256, 2]"]
    assert summarize(toy) == text
    assert summarize(Graph()).startswith("graph: 0 tensors (0 nodes, 0 leafs)\n")


# ---------------------------------------------------------------- dot


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("attn_norm-0", 0),
        ("Qcur-12", 12),
        ("blk.3.attn_q.weight", 3),
        ("cache_k_l7", 7),
        ("cache_k_l0 (view) (copy of Qcur-5)", 0),  # the layer is the one before ggml's suffixes
        ("Kcur-2 (reshaped) (permuted)", 2),
        ("inp_embd", None),
        ("output_norm.weight", None),
        ("", None),
    ],
)
def test_layer_of(name: str, layer: int | None) -> None:
    assert layer_of(name) == layer


def _clusters(dot: str) -> dict[str, set[int]]:
    """Cluster name -> ids of the tensors declared in it ("" for those outside every cluster)."""
    out: dict[str, set[int]] = {"": set()}
    current = ""
    for line in dot.splitlines():
        m = re.match(r"\s*subgraph (\w+) \{", line)
        if m:
            current = m.group(1)
            out[current] = set()
        elif line.strip() == "}":
            current = ""
        elif d := re.match(r"\s*t(\d+) \[", line):
            out[current].add(int(d.group(1)))
    return out


def test_dot_one_node_per_tensor_clustered_by_layer(toy: Graph) -> None:
    dot = to_dot(toy)
    assert "rankdir=TB;" in dot
    clusters = _clusters(dot)
    assert set(clusters) == {"", "cluster_layer_0", "cluster_layer_1"}
    assert clusters["cluster_layer_0"] == LAYER0
    assert clusters["cluster_layer_1"] == LAYER1
    assert clusters[""] == {0, 19, 20, 21, 22, 23}
    assert sum(len(ids) for ids in clusters.values()) == len(toy.tensors)  # each tensor declared exactly once


def test_dot_labels_and_edges(toy: Graph) -> None:
    dot = to_dot(toy)
    assert 't6 [label="%6 Qcur-0\\nMUL_MAT  f32 [256, 2]"' in dot
    assert 't2 [label="%2 blk.0.attn_q.weight\\nweight  q4_K [256, 256]"' in dot
    assert r'"%20 odd \"q\" \\ <x>\nconstant  f32 [1]"' in dot  # quote and backslash escaped
    # The aliased edge into a view is thin and dashed; the data CPY copies is real flow.
    assert "t3 -> t7 [style=dashed penwidth=0.5];" in dot
    assert "t7 -> t8 [style=dashed penwidth=0.5];" in dot
    assert "t6 -> t8;" in dot
    assert "t5 -> t6;" in dot
    # Every source link is drawn once.
    n_edges = sum(len({id(s) for s in t.src if s is not None}) for t in toy.tensors)
    assert len(re.findall(r"^\s*t\d+ -> t\d+", dot, re.M)) == n_edges


def test_render_dot_text_needs_no_graphviz(toy: Graph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    out = tmp_path / "g.dot"
    render(toy, out)
    assert out.read_text(encoding="utf-8") == to_dot(toy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot"]


def test_render_without_graphviz_is_a_clear_error(toy: Graph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no `dot` anywhere on it
    with pytest.raises(GgcError, match=r"graphviz 'dot' not found: install graphviz \(apt-get install graphviz\)"):
        render(toy, tmp_path / "g.svg")
    assert list(tmp_path.iterdir()) == []


def test_render_failure_leaves_no_partial_file(toy: Graph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A `dot` that writes half a file and fails: the target must not appear, the temporary must go.
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "<svg" > "$3"\necho "Error: boom" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(fake.parent))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(GgcError, match="dot failed.*boom"):
        render(toy, out_dir / "g.svg")
    assert list(out_dir.iterdir()) == []


def test_render_unknown_format(toy: Graph, tmp_path: Path) -> None:
    with pytest.raises(GgcError, match="unknown output format 'gif'"):
        render(toy, tmp_path / "g.gif")


@pytest.mark.skipif(not HAVE_DOT, reason="graphviz 'dot' is not installed (apt-get install graphviz)")
def test_render_svg_one_node_per_tensor(toy: Graph, tmp_path: Path) -> None:
    out = tmp_path / "g.svg"
    render(toy, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.svg"]
    root = ET.parse(out).getroot()
    groups = [g for g in root.iter("{http://www.w3.org/2000/svg}g")]
    nodes = [g for g in groups if g.get("class") == "node"]
    clusters = [g for g in groups if g.get("class") == "cluster"]
    assert len(nodes) == len(toy.tensors)  # every tensor drawn, leafs included, exactly once
    assert len(clusters) == 2
    titles = {g.findtext("{http://www.w3.org/2000/svg}title") for g in nodes}
    assert titles == {f"t{t.id}" for t in toy.tensors}


@pytest.mark.skipif(not HAVE_DOT, reason="graphviz 'dot' is not installed (apt-get install graphviz)")
def test_render_format_overrides_suffix(toy: Graph, tmp_path: Path) -> None:
    out = tmp_path / "g.out"
    render(toy, out, fmt="png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
