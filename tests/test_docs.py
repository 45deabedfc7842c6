"""The docs stay true: README's test command is CI's, FORMAT.md's example is what export writes."""

from __future__ import annotations

import re
from pathlib import Path

from ggc.capture.llama import LlamaSession
from ggc.formats import ggraph
from ggc.models.quantize import tiny_model

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    ci = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert len(ci) == 1
    assert ci[0] in (ROOT / "README.md").read_text()


def test_format_example_is_a_real_export() -> None:
    doc = (ROOT / "docs/FORMAT.md").read_text()
    blocks = re.findall(r"```\n(ggraph 1\n.*?)```", doc, re.S)
    assert len(blocks) == 1
    example = blocks[0]
    g = ggraph.parse(example, "docs/FORMAT.md")
    assert ggraph.write(g) == example
    with LlamaSession(tiny_model("llama", "f16")) as s:
        live, _ = s.capture(1)
    live.meta["model"] = g.meta["model"]
    assert ggraph.write(live) == example
    layers = {t.name.rsplit("-", 1)[-1] for t in g.nodes if re.search(r"-\d$", t.name)}
    assert layers == {"0", "1"}
