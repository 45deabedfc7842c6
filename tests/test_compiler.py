"""Compiler passes and the arena plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ggc.capture.builder import GraphBuilder
from ggc.capture.llama import LlamaSession
from ggc.compiler.arena import check, plan
from ggc.compiler.passes import NO_FUSION, live_nodes, make_groups
from ggc.models.quantize import tiny_model
from ggc.models.tiny import ARCHS
from ggc.oracle.rebuild import Rebuilt
from tests.test_builder import act
from tests.util import run_ggc


@pytest.fixture(scope="module")
def graphs() -> dict:
    out = {}
    for arch in ARCHS:
        with LlamaSession(tiny_model(arch, "q4_0")) as s:
            for n in (1, 8):
                out[arch, n] = s.capture(n)[0]
    return out


@pytest.mark.parametrize("n", [1, 8])
@pytest.mark.parametrize("arch", ARCHS)
def test_plan_is_sound_and_tight(graphs: dict, arch: str, n: int) -> None:
    g = graphs[arch, n]
    p = plan(g)
    check(p)  # no two live scratch buffers overlap
    assert p.region_size["scratch"] <= 1.10 * p.liveness_lower_bound()
    # every live tensor has an address inside the arena, views inside their parent
    for t in g.tensors:
        if p.has_memory(t):
            off = p.offset_of(t)
            assert 0 <= off and off + t.nbytes <= p.size, t.label()
    offsets = [p.region_offset[r] for r in ("weights", "state", "io", "scratch")]
    assert offsets == sorted(offsets)
    debug = plan(g, reuse=False)
    assert debug.region_size["scratch"] >= p.region_size["scratch"]


@pytest.mark.parametrize("n", [1, 8])
def test_arena_is_no_larger_than_ggml_alloc(graphs: dict, n: int) -> None:
    g = graphs["llama", n]
    p = plan(g)
    with Rebuilt(g, alloc=False) as rb:
        ggml = rb.ggml_alloc_size()
    assert p.region_size["io"] + p.region_size["scratch"] <= ggml


def test_dead_code_is_removed_but_cache_writes_stay(graphs: dict) -> None:
    g = graphs["llama", 8]
    live = live_nodes(g)
    assert all(t.id in live for t in g.nodes if t.op == "SET_ROWS")
    assert next(t for t in g.leafs if t.name == "inp_embd").id not in live  # llama.cpp's unused input
    with GraphBuilder() as b:
        x = act(b, 16, 2)
        b.op("silu", x)  # never used
        out = b.op("scale", x, 2.0)
        small = b.capture(out)
    assert [t.op for t in small.nodes if t.id in live_nodes(small)] == ["SCALE"]


def test_elementwise_chains_fuse_into_one_group() -> None:
    with GraphBuilder() as b:
        x, y = act(b, 64, 4), act(b, 64, 4, name="y")
        h = b.op("mul_mat", b.tensor("f32", (64, 64), "w", data=np.ones((64, 64), np.float32)), x)
        out = b.op("scale", b.op("silu", b.op("add", h, y)), 0.5)
        g = b.capture(out)
    groups = make_groups(g, live_nodes(g))
    assert [[t.op for t in grp.nodes] for grp in groups] == [["MUL_MAT"], ["ADD", "UNARY", "SCALE"]]
    assert groups[1].outputs == [g.nodes[-1]] and {t.name for t in groups[1].inputs()} == {h_name(g), "y"}
    p = plan(g)
    assert all(t.id not in p.buffers for t in groups[1].nodes[:-1])  # fused intermediates own no memory
    assert [len(grp.nodes) for grp in make_groups(g, live_nodes(g), NO_FUSION)] == [1, 1, 1, 1]


def h_name(g) -> str:  # noqa: ANN001
    return next(t.name for t in g.nodes if t.op == "MUL_MAT")


def test_plan_command_reports_and_draws(tmp_path: Path) -> None:
    model = tiny_model("llama", "f16")
    assert run_ggc("export", str(model), "--tokens", "8", "-o", "p.ggraph", cwd=tmp_path).returncode == 0
    r = run_ggc("plan", "p.ggraph", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "liveness lower bound" in r.stdout and "ggml-alloc compute buffer" in r.stdout
    png = tmp_path / "p.plan.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plan_kernels_lists_each_targets_groups(tmp_path: Path) -> None:
    model = tiny_model("llama", "q4_0")
    assert run_ggc("export", str(model), "--tokens", "1", "-o", "d.ggraph", cwd=tmp_path).returncode == 0
    cuda = run_ggc("plan", "d.ggraph", "--kernels", cwd=tmp_path)
    assert cuda.returncode == 0, cuda.stderr
    c = run_ggc("plan", "d.ggraph", "--kernels", "--target", "c", cwd=tmp_path)
    assert c.returncode == 0, c.stderr
    head = cuda.stdout.splitlines()[0]
    assert head.startswith("kernel groups for target cuda: ") and " read, " in head and "written" in head
    # the CUDA rules fuse norms, residual ADDs and gate/up/SWIGLU; the C target's stay apart
    for fused in ("RMS_NORM + MUL", "MUL_MAT + ADD", "MUL_MAT + MUL_MAT + GLU SWIGLU"):
        assert fused in cuda.stdout and fused not in c.stdout
    n_cuda = int(head.split(": ")[1].split()[0])
    n_c = int(c.stdout.splitlines()[0].split(": ")[1].split()[0])
    assert n_cuda < n_c
    # one line per group after the two header lines
    assert len(cuda.stdout.splitlines()) == n_cuda + 2
