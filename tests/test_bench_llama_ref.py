"""bench/llama_ref_tokens.py, the host side of bench/llama_cuda_check.sh: the reference tokens it prints are
those `ggc run --check` accepts, its prompt ids are `ggc run`'s, and its comparison names the first difference."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

import ggc
from ggc.models.quantize import tiny_model

_spec = importlib.util.spec_from_file_location("llama_ref_tokens",
                                               Path(__file__).parents[1] / "bench" / "llama_ref_tokens.py")
assert _spec is not None and _spec.loader is not None
ref_tool = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ref_tool
_spec.loader.exec_module(ref_tool)

PROMPT = "The old lighthouse keeper climbed the stairs every evening, counting each step"


def test_reference_tokens_and_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ggc.cli import _check

    path = tiny_model("llama", "q8_0")
    ids = tmp_path / "prompt.ids"
    a = argparse.Namespace(model=str(path), ctx=256, batch=8, n=6, prompt=PROMPT, ids_out=str(ids))
    assert ref_tool.cmd_ref(a) == 0
    out = capsys.readouterr().out
    ref = tmp_path / "m.ref.txt"
    ref.write_text(out)

    prompt = [int(t) for t in ids.read_text().split()]
    with ggc.Model(path, ctx=256, batch=8, progress=None, load=False) as m:
        assert prompt == m.tokenize(PROMPT)
    rows, err = ref_tool.read_tokens(str(ref))
    assert err is None and [r[0] for r in rows] == list(range(6))
    assert all(r[2] >= r[4] for r in rows)  # each pick is the larger of its two logits
    tokens = [r[1] for r in rows]
    assert _check(argparse.Namespace(temp=0.0, ctx=256, batch=8), path, prompt, tokens) == 0

    other = tmp_path / "m.cuda.txt"
    other.write_text(out)
    assert ref_tool.compare(rows, ref_tool.read_tokens(str(other))[0], 6) == "all 6 equal"
    lines = out.splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith("3 "))
    i, t, lt, u, lu = lines[k].split()
    lines[k] = f"{i} {u} {lu} {t} {lt}"  # the runner-up picked at token 3
    other.write_text("\n".join(lines) + "\n")
    got = ref_tool.compare(rows, ref_tool.read_tokens(str(other))[0], 6)
    assert got.startswith(f"differs at 3: {u} ") and f"ref {t} " in got
