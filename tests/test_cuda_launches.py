"""Every CUDA kernel takes part in programmatic dependent launch correctly (no GPU needed): each is
launched through ggc_launch, never <<<>>>, and each starts with GGC_PDL_BEGIN(), the wait for the
kernel before it, or defers that wait past loads of constants alone (GGC_PDL_WAIT_UNLESS, then
GGC_PDL_AFTER_PREFETCH). A kernel launched to overlap its predecessor without the wait would race it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ggc.backends.cuda.emit import CUDA_KERNEL_DIR, CUDA_RUNTIME_DIR

SOURCES = sorted(p for d in (CUDA_KERNEL_DIR, CUDA_RUNTIME_DIR) for p in d.iterdir() if p.suffix in (".cu", ".cuh"))
KERNEL = re.compile(r"__global__[^;{]*?\)\s*\{\s*(?P<first>[^\n]*)", re.S)


EARLY = re.compile(r"GGC_PDL_WAIT_UNLESS\((?P<cond>[^;]*)\);")


def _waits(first: str, body: str) -> bool:
    """GGC_PDL_BEGIN() first, or GGC_PDL_WAIT_UNLESS(c) first (constant reads may come before the
    wait) and GGC_PDL_AFTER_PREFETCH(c), with the same c, further on."""
    if first == "GGC_PDL_BEGIN();":
        return True
    m = EARLY.fullmatch(first)
    return m is not None and f"GGC_PDL_AFTER_PREFETCH({m.group('cond')});" in body


def kernels_without_wait(text: str) -> list[str]:
    out = []
    for m in KERNEL.finditer(text):
        nxt = text.find("__global__", m.end())
        if not _waits(m.group("first"), text[m.end():nxt if nxt >= 0 else len(text)]):
            out.append(m.group(0).split("(")[0][-60:])
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_kernels_wait_for_their_predecessor(path: Path) -> None:
    text = path.read_text()
    assert "<<<" not in text, f"{path.name}: launch with ggc_launch (programmatic dependent launch), not <<<>>>"
    assert kernels_without_wait(text) == []


def test_the_scan_finds_a_kernel_without_the_wait() -> None:
    assert kernels_without_wait("__global__ void k(int *x) {\n    x[0] = 1;\n}") != []
    assert kernels_without_wait("__global__ void k(int *x) {\n    GGC_PDL_BEGIN();\n    x[0] = 1;\n}") == []
    early = "__global__ void k(int *x, int c) {\n    GGC_PDL_WAIT_UNLESS(c);\n    int w = x[1];\n"
    assert kernels_without_wait(early + "    GGC_PDL_AFTER_PREFETCH(c);\n    x[0] = w;\n}") == []
    assert kernels_without_wait(early + "    x[0] = w;\n}") != []  # never waits when c holds
    assert kernels_without_wait(early + "    GGC_PDL_AFTER_PREFETCH(d);\n    x[0] = w;\n}") != []
    n = sum(len(KERNEL.findall(p.read_text())) for p in SOURCES)
    assert n >= 30  # the library's kernels are all seen
