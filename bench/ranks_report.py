"""The scaling table of bench/ranks.sh: decode and prefill tok/s of each bench model on 1, 2, ... GPUs.

    python bench/ranks_report.py BENCH_DIR --commit SHA

Reads BENCH_DIR/tp-<model>-<gpus>.json (bench/ggc_bench.py --ranks), models.json, ceilings.json,
gpus.txt and topo.txt. Speedup is against the same model on 1 GPU in the same run; scaling
efficiency is speedup / GPUs. The bandwidth floor of R GPUs is each GPU reading its 1/R of the
weights at one GPU's measured copy bandwidth (the all-reduces between them are not in it), so
"% of floor" says how much of the GPUs' combined bandwidth a token uses.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path


def _load(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def report(d: Path, commit: str) -> str:
    models = _load(d / "models.json") or {}
    ceil = _load(d / "ceilings.json") or {}
    bw = ceil.get("copy_GBps")
    gpus = (d / "gpus.txt").read_text().strip().splitlines() if (d / "gpus.txt").exists() else []
    lines = [f"# Tensor parallelism: decode on 1 to {len(gpus)} GPUs, {datetime.date.today()}",
             "", f"Commit `{commit}`, `bench/ranks.sh bench`, one device call. GPUs:", ""]
    lines += [f"- {g}" for g in gpus]
    lines += ["", f"Copy bandwidth of one GPU, measured in the same run: {bw:,.0f} GB/s." if bw else "",
              "", "| model | GPUs | scheme | decode tok/s | speedup | scaling efficiency | % of floor (R GPUs) "
              "| decode tok/s (device) | prefill 512 tok/s | arena per GPU |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, wb in models.items():
        runs = []  # (GPUs, scheme, result)
        for p in d.glob(f"tp-{name}-*.json"):
            config = p.stem.removeprefix(f"tp-{name}-")
            g, _, sums = config.partition("-")
            if g.isdigit() and sums in ("", "sums"):
                runs.append((int(g), sums, _load(p)))
        runs.sort(key=lambda r: (r[0], r[1]))
        base = next((r["tg_tok_s"] for g, _, r in runs if g == 1 and r), None)
        for g, sums, r in runs:
            scheme = "partial sums (all-reduce)" if sums else ("one GPU" if g == 1 else "exact (all-gather)")
            if not r:
                lines.append(f"| {name} | {g} | {scheme} | failed | | | | | | |")
                continue
            tg = r["tg_tok_s"]
            speed = tg / base if base else None
            floor = bw * 1e9 / (wb["per_token"] / g) if bw else None
            lines.append(f"| {name} | {g} | {scheme} | {tg:,.0f} | {f'{speed:.2f}x' if speed else '-'} "
                         f"| {f'{speed / g:.0%}' if speed else '-'} | {f'{tg / floor:.0%}' if floor else '-'} "
                         f"| {r['tg_device_tok_s']:,.0f} | {r['pp_tok_s']:,.0f} | {r['arena_bytes'] / 2**30:.2f} GiB |")
    lines += ["", "Decode: 128 tokens after a 512-token prompt, batch 1, greedy, median of the repetitions; "
              "prefill: one 512-token batch. Each rank is one process on its own GPU, and the collectives "
              "go through NCCL, NVLink multicast off. Schemes: 'exact' splits every product by rows and "
              "gathers the split results, so every value is as on one GPU; 'partial sums' is Megatron's, "
              "an all-reduce after the attention output and the FFN down projection."]
    topo = (d / "topo.txt").read_text().strip() if (d / "topo.txt").exists() else ""
    if topo:
        lines += ["", "How the GPUs are linked (`nvidia-smi topo -m`):", "", "```", topo, "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--commit", default="?")
    a = ap.parse_args()
    print(report(Path(a.dir), a.commit), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
