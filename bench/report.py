"""The results table of one bench run, from the JSON files that bench/run.sh leaves in its folder.

    python bench/report.py DIR [--commit SHA] [--scaling] > RESULTS.md

DIR holds ceilings.json, models.json (bytes per model), ggc-MODEL.json and ggc-MODEL.mem.json from
bench/ggc_bench.py and bench/peak_mem.py, and llama-MODEL-{pp,tg}.json (llama-bench -o json) with
llama-MODEL-tg.mem.json. Every figure is set against a ceiling measured in the same run: decode
against the bandwidth floor (weight bytes read per token / copy bandwidth), prefill against the
bf16 matrix rate (2 x weight parameters FLOPs a token). --scaling writes bench/ranks.sh's table of
tensor-parallel runs on 1, 2, ... GPUs instead (scaling()).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path


def _load(p: Path) -> dict | list | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _llama_ts(d: Path, model: str, kind: str) -> float | None:
    rows = _load(d / f"llama-{model}-{kind}.json")
    if not isinstance(rows, list) or not rows:
        return None
    return float(rows[0]["avg_ts"])


def _f(x: float | None, fmt: str = "{:,.0f}") -> str:
    return fmt.format(x) if x is not None else "—"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "—"


def report(d: Path, commit: str) -> str:
    ceil = _load(d / "ceilings.json") or {}
    models = _load(d / "models.json") or {}
    bw = ceil.get("copy_GBps")
    tf = ceil.get("bf16_TFLOPs")
    out = [f"# Bench: ggc vs llama.cpp CUDA, {datetime.date.today()}", "",
           f"Device: {ceil.get('device', '?')}. Commit: {commit}. Ceilings measured in the same run: copy bandwidth "
           f"{_f(bw)} GB/s (read + written), bf16 matrix product {_f(tf, '{:.0f}')} TFLOP/s.", "",
           "Decode: 128 tokens at batch 1 after a 512-token prompt (llama-bench `-n 128 -d 512`). Prefill: "
           "512 tokens from an empty cache (`-p 512`). Flash attention on, all layers on the GPU, same GGUF file. "
           "Peak GPU memory: device memory in use over the idle baseline (nvidia-smi, 50 ms polls), context 640.",
           "",
           "| model | weights read / token | engine | decode tok/s | % of bandwidth floor | prefill tok/s "
           "| % of bf16 rate | peak GPU MiB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary = []
    for name, info in models.items():
        wbytes, params = info["per_token"], info["params"]
        floor_tok_s = bw * 1e9 / wbytes if bw else None
        g = _load(d / f"ggc-{name}.json") or {}
        gm = _load(d / f"ggc-{name}.mem.json") or {}
        lm = _load(d / f"llama-{name}-tg.mem.json") or {}
        l_tg, l_pp = _llama_ts(d, name, "tg"), _llama_ts(d, name, "pp")
        g_tg, g_pp = g.get("tg_tok_s"), g.get("pp_tok_s")

        def pct_floor(x: float | None, f: float | None = floor_tok_s) -> str:
            return f"{100 * x / f:.0f}%" if x and f else "—"

        def pct_mm(x: float | None, n: int = params) -> str:
            return f"{100 * x * 2 * n / (tf * 1e12):.0f}%" if x and tf else "—"

        for engine, tg, pp, mem in (("ggc", g_tg, g_pp, gm.get("peak_mib")),
                                    ("llama.cpp", l_tg, l_pp, lm.get("peak_mib"))):
            out.append(f"| {name} | {wbytes / 1e9:.2f} GB | {engine} | {_f(tg)} | {pct_floor(tg)} | {_f(pp)} "
                       f"| {pct_mm(pp)} | {_f(mem)} |")
        out.append(f"| {name} | | **ggc / llama.cpp** | **{_ratio(g_tg, l_tg)}** | | **{_ratio(g_pp, l_pp)}** | "
                   f"| {_ratio(gm.get('peak_mib'), lm.get('peak_mib'))} |")
        summary.append((name, g, l_tg))
    out += ["", "ggc details (median of the timed repetitions; device time = CUDA events around each replay):", "",
            "| model | decode tok/s (wall) | decode tok/s (device) | ms / token | prefill tok/s (wall) "
            "| prefill tok/s (device) | start (cached program) s | arena bytes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, g, _ in summary:
        out.append(f"| {name} | {_f(g.get('tg_tok_s'))} | {_f(g.get('tg_device_tok_s'))} | "
                   f"{_f(g.get('tg_ms_per_token'), '{:.3f}')} | {_f(g.get('pp_tok_s'))} | "
                   f"{_f(g.get('pp_device_tok_s'))} | {_f(g.get('start_s'), '{:.1f}')} | {_f(g.get('arena_bytes'))} |")
    intro = {"decode": "ggc decode step phase by phase, one step at a time (median µs; `run` is the call that replays "
                       "the graph and takes the greedy pick on the GPU, its index read back; `device` the CUDA events "
                       "around the replay; `read`, reading all logits back instead, is not part of the step). In the "
                       "decode figures above the host runs a step ahead, so fill and write overlap the previous "
                       "step's replay:",
             "prefill": "ggc prefill step (the 512-token prompt from an empty cache) phase by phase, the same way "
                        "(median µs of 5; `reset` clears the state first, as each timed prefill does):"}
    for phase, text in intro.items():
        hosts = [(name, g[f"{phase}_host_us"]) for name, g, _ in summary if g.get(f"{phase}_host_us")]
        if hosts:
            keys = list(hosts[0][1])
            out += ["", text, "", "| model | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
            out += [f"| {name} | " + " | ".join(f"{h.get(k, 0):.1f}" for k in keys) + " |" for name, h in hosts]
    for name, g, _ in summary:
        for phase in ("decode", "prefill"):
            rows = (g.get("profile") or {}).get(phase) or []
            if not rows:
                continue
            total = sum(r["ms"] for r in rows)
            out += ["", f"ggc {name}, one {phase} step, kernel groups launched one by one and timed with CUDA events "
                    f"(total {total:.3f} ms; the recorded graph runs without the launch gaps):", "",
                    "| kernel kind | groups | ms | share |", "| --- | --- | --- | --- |"]
            out += [f"| {r['kind']} | {r['count']} | {r['ms']:.3f} | {100 * r['ms'] / total:.0f}% |" for r in rows[:14]]
    extra = []
    for name in models:
        tg0 = _llama_ts(d, name, "tg0")
        if tg0:
            extra.append(f"- llama.cpp {name}: tg128 at depth 0 {tg0:,.0f} tok/s")
        prep = _load(d / f"ggc-{name}.prepare.json") or {}
        if prep.get("first_start_s"):
            extra.append(f"- ggc {name}: first start (capture, compile, nvcc, load) {prep['first_start_s']:.1f} s")
    b = (d / "llama_build_time.txt")
    if b.exists():
        extra.append(f"- llama.cpp CUDA build on the device machine: {b.read_text().strip()}")
    if extra:
        out += ["", *extra]
    return "\n".join(out) + "\n"


def scaling(d: Path, commit: str) -> str:
    """The multi-GPU table (bench/ranks.sh bench): DIR's tp-MODEL-G[-sums].json (bench/ggc_bench.py
    --ranks G), models.json, ceilings.json, gpus.txt and topo.txt. Speedup is against the same model
    on 1 GPU in the same run, scaling efficiency is speedup / G, and the floor of G GPUs is each
    reading its 1/G of the weights at one GPU's measured copy bandwidth (the collectives are not in
    it), so "% of floor" is the share of the GPUs' combined bandwidth a token uses."""
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
    ap.add_argument("--scaling", action="store_true", help="the multi-GPU table of bench/ranks.sh")
    a = ap.parse_args()
    print((scaling if a.scaling else report)(Path(a.dir), a.commit), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
