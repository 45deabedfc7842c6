"""Per-kernel device time from `ncu --csv --page raw --metrics gpu__time_duration.sum` output, summed by kernel.

    python bench/ncu_table.py NCU.csv [--steps N] [--title T]

Prints a markdown table: kernel (name with template arguments, parameters dropped), launches per step, total µs
per step, mean µs per launch, share. --steps divides counts and times (several steps profiled).
"""

from __future__ import annotations

import argparse
import csv
import io
import re


def rows(text: str) -> list[tuple[str, float]]:
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        return []
    out = []
    rd = csv.DictReader(io.StringIO("\n".join(lines[start:])))
    for r in rd:
        name, t = r.get("Kernel Name", ""), r.get("gpu__time_duration.sum", "")
        try:
            ns = float(t.replace(",", ""))
        except ValueError:
            continue  # the units row
        out.append((short(name), ns / 1e3))
    return out


def short(name: str) -> str:
    """The kernel's name with its template arguments, not its parameter list; ggml's long namespaces trimmed."""
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # the parameter list is the last top-level "(...)"
        if ch in "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
    s = name[:cut].removeprefix("void ")
    # one row for a graph's generated kernels (group_<graph>_<group>_kernel)
    s = re.sub(r"^group_(\d+)_\d+_kernel$", r"group_\1_*_kernel (generated)", s)
    return re.sub(r"\(ggml_type\)|\(ggc_type\)", "t", s)[:110]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    rs = rows(open(a.csv, errors="replace").read())
    agg: dict[str, list[float]] = {}
    for n, us in rs:
        agg.setdefault(n, []).append(us)
    total = sum(us for _, us in rs) / a.steps
    print(f"### {a.title}: {len(rs) / a.steps:.0f} kernels, {total:.1f} us of kernel time per step\n")
    print("| kernel | launches | us total | us mean | share |\n| --- | --- | --- | --- | --- |")
    for n, v in sorted(agg.items(), key=lambda kv: -sum(kv[1])):
        s = sum(v) / a.steps
        print(f"| `{n}` | {len(v) / a.steps:.0f} | {s:.1f} | {sum(v) / len(v):.2f} | {100 * s / total:.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
