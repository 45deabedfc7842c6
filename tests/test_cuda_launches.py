"""Every CUDA kernel takes part in programmatic dependent launch correctly (no GPU needed): each is
launched through ggc_launch, never <<<>>>, and each starts with GGC_PDL_BEGIN(), the wait for the
kernel before it. A kernel launched to overlap its predecessor without that wait would race it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ggc.backends.cuda.emit import CUDA_KERNEL_DIR, CUDA_RUNTIME_DIR

SOURCES = sorted(p for d in (CUDA_KERNEL_DIR, CUDA_RUNTIME_DIR) for p in d.iterdir() if p.suffix in (".cu", ".cuh"))
KERNEL = re.compile(r"__global__[^;{]*?\)\s*\{\s*(?P<first>[^\n]*)", re.S)


def kernels_without_wait(text: str) -> list[str]:
    return [m.group(0).split("(")[0][-60:] for m in KERNEL.finditer(text) if m.group("first") != "GGC_PDL_BEGIN();"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_kernels_wait_for_their_predecessor(path: Path) -> None:
    text = path.read_text()
    assert "<<<" not in text, f"{path.name}: launch with ggc_launch (programmatic dependent launch), not <<<>>>"
    assert kernels_without_wait(text) == []


def test_the_scan_finds_a_kernel_without_the_wait() -> None:
    assert kernels_without_wait("__global__ void k(int *x) {\n    x[0] = 1;\n}") != []
    assert kernels_without_wait("__global__ void k(int *x) {\n    GGC_PDL_BEGIN();\n    x[0] = 1;\n}") == []
    n = sum(len(KERNEL.findall(p.read_text())) for p in SOURCES)
    assert n >= 30  # the library's kernels are all seen
