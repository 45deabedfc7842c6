"""bench/ncu_table.py: Nsight Compute's raw CSV (its log lines first, a units row) summed by kernel."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("ncu_table", Path(__file__).parents[1] / "bench" / "ncu_table.py")
assert _spec is not None and _spec.loader is not None
ncu = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ncu
_spec.loader.exec_module(ncu)

CSV = """==WARNING== Note: Running with unmodified GPU clocks.
==PROF== Connected to process 4174 (/usr/bin/python3.12)
"ID","Process ID","Kernel Name","gpu__time_duration.sum"
"","","","nsecond"
"0","1","void ggc_k_gemv1<(ggc_type)32, 2, false>(ggc_mm_args)","9,290"
"1","1","group_1_12_kernel(char *)","5,600"
"2","1","void ggc_k_gemv1<(ggc_type)32, 2, false>(ggc_mm_args)","9,310"
"3","1","group_1_40_kernel(char *)","5,800"
"4","1","void (anonymous namespace)::k_rope(rope_args)","4,400"
"""


def test_rows_and_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ncu.rows(CSV)
    assert [n for n, _ in rows] == ["ggc_k_gemv1<t32, 2, false>", "group_1_*_kernel (generated)",
                                    "ggc_k_gemv1<t32, 2, false>", "group_1_*_kernel (generated)",
                                    "(anonymous namespace)::k_rope"]
    assert [us for _, us in rows] == [9.29, 5.6, 9.31, 5.8, 4.4]
    (tmp_path / "p.csv").write_text(CSV)
    sys.argv = ["ncu_table", str(tmp_path / "p.csv"), "--title", "t"]
    assert ncu.main() == 0
    out = capsys.readouterr().out
    assert "### t: 5 kernels, 34.4 us of kernel time per step" in out
    assert "| `ggc_k_gemv1<t32, 2, false>` | 2 | 18.6 | 9.30 | 54.1% |" in out
    assert "| `group_1_*_kernel (generated)` | 2 | 11.4 | 5.70 | 33.1% |" in out


def test_no_kernels() -> None:
    assert ncu.rows("==PROF== Disconnected from process 1\n") == []
