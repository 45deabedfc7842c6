"""ggc's side of the benchmark: prefill and decode speed of a generated program on one GGUF.

    python bench/ggc_bench.py MODEL.gguf [--target cuda] [--prompt 512] [--gen 128] [--reps 3] [--json OUT]

Measures what llama-bench measures, on the same file: prefill of a --prompt-token batch from an
empty cache (pp), and --gen decode steps of one token after a --prompt-token prompt (tg). Each
figure is the median over --reps repetitions after one warm-up. Wall time is the time between
tokens as a greedy `ggc run` sees them (Model.stream: inputs written, the recorded CUDA graph
replayed, the argmax of the logits taken on the GPU and its index read back, with step k + 1
queued, its token fed on the device, before step k's token is read); device time is CUDA events
around each replay. llama-bench copies each token's logits to the host instead; decode_host_us shows what that
copy would cost ggc ("read", not part of the step). The program is compiled for exactly the
prefill batch (--prompt) and a context of prompt + gen tokens, as llama-bench sizes its context.
--prepare only captures, compiles and builds the program (into the on-disk cache) and exits, so
that the timed run later starts from the cache on an idle CPU. --ranks R runs the program
tensor-parallel on R GPUs: compiled here once, then R processes (one a GPU, NCCL) each run the
same measurement in step, and rank 0 reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ggc.errors import GgcError  # noqa: E402
from ggc.llm.model import Model  # noqa: E402
from ggc.runtime.ranks import launch_ranks, rank_env  # noqa: E402


def prepare(path: str, target: str, n_prompt: int, n_gen: int, ranks: int = 1, sums: bool = False) -> dict:
    t0 = time.perf_counter()
    # several ranks: compiled and built only, the processes of the run load their shares
    with Model(path, target=target, ctx=n_prompt + n_gen, batch=n_prompt, ranks=ranks, load=ranks == 1,
               partial_sums=sums) as m:
        return {"model": Path(path).name, "target": m.target, "ranks": ranks, "cached_program": m.stats.cached,
                "first_start_s": round(time.perf_counter() - t0, 2)}


def bench(path: str, target: str, n_prompt: int, n_gen: int, reps: int, ranks: int = 1, sums: bool = False) -> dict:
    t0 = time.perf_counter()
    m = Model(path, target=target, ctx=n_prompt + n_gen, batch=n_prompt, ranks=ranks, partial_sums=sums)
    start_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    prompt = [int(x) for x in rng.integers(3, m.n_vocab, n_prompt)]  # past the specials, like random text
    pp_wall, pp_dev, tg_wall, tg_dev = [], [], [], []
    m.is_eog = lambda _tok: False  # type: ignore[method-assign] # as llama-bench, generate all n_gen tokens
    for rep in range(reps + 1):  # rep 0 warms up (and records the CUDA graphs of each KV length)
        # greedy generation as `ggc run` does it (Model.stream: the host a step ahead of the GPU):
        # the first token ends the prompt's step, the next n_gen are decode steps
        t = time.perf_counter()
        stamps, dev = [], []
        for _ in m.stream(prompt, n=n_gen + 1):
            stamps.append(time.perf_counter())
            dev.append(m.program.last_run_ms() / 1e3)
        if rep:
            pp_wall.append(stamps[0] - t)
            pp_dev.append(dev[0])
            tg_wall.append(stamps[-1] - stamps[0])
            tg_dev.append(sum(dev[1:]))
    plan = m.program.plan
    m.reset()
    host = _host_breakdown(m, m.eval_greedy(prompt))
    prof = {"decode": _profile(m, 1), "prefill": _profile(m, 0)}
    host_pp = _host_breakdown(m, 0, steps=5, prompt=prompt)
    res = {
        "model": Path(path).name,
        "target": m.target,
        "ranks": ranks,
        "partial_sums": sums,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "ctx": m.ctx,
        "start_s": round(start_s, 2),
        "cached_program": m.stats.cached,
        "arena_bytes": plan.size - plan.host_size,  # on the GPU (the embedding stays in host memory)
        "pp_tok_s": n_prompt / statistics.median(pp_wall),
        "pp_device_tok_s": n_prompt / statistics.median(pp_dev),
        "tg_tok_s": n_gen / statistics.median(tg_wall),
        "tg_device_tok_s": n_gen / statistics.median(tg_dev),
        "tg_ms_per_token": 1e3 * statistics.median(tg_wall) / n_gen,
        "reps": reps,
        "decode_host_us": host,
        "prefill_host_us": host_pp,
        "profile": prof,
    }
    m.close()
    return res


def _host_breakdown(m: Model, tok: int, steps: int = 32, prompt: list[int] | None = None) -> dict:
    """Where a step's wall time goes, phase by phase (median µs over `steps` steps): what
    Model.eval_greedy does for one token (or, given a prompt, for the prompt's one prefill step
    from an empty cache, `reset` then being the state's reset), timed piece by piece; then, outside
    the step, what reading the logits back would cost (Model.eval)."""
    gi = 0 if prompt else 1
    ph: dict[str, list[float]] = {"reset": [], "fill": [], "write": [], "run": [], "device": [], "read": []}
    filler, prog = m.fillers[gi], m.program
    for _ in range(steps if prompt else min(steps, m.ctx - m.n_past)):
        t = time.perf_counter()
        if prompt:
            m.reset()
        t0 = time.perf_counter()
        toks = prompt or [tok]
        block = m.input_block(gi)
        filler.fill(block.arrays, toks, m.n_past)
        t1 = time.perf_counter()
        block.write()
        prog.set_n_kv(m.n_past + len(toks))
        t2 = time.perf_counter()
        tok = prog.argmax(m._logits[gi], graph=gi, run=True)
        t3 = t4 = time.perf_counter()
        prog.get_f32(m._logits[gi], graph=gi)
        t5 = time.perf_counter()
        m.n_past += len(toks)
        for k, v in zip(ph, (t0 - t, t1 - t0, t2 - t1, t3 - t2, prog.last_run_ms() / 1e3, t5 - t4)):
            ph[k].append(v)
    return {k: round(1e6 * statistics.median(v), 1) for k, v in ph.items() if v and (prompt or k != "reset")}


def _kind(t) -> str:  # noqa: ANN001 - a Tensor
    """What a kernel group is, for the profile: op, weight type and shape for matrix products."""
    if t.op in ("MUL_MAT", "MUL_MAT_ID"):
        w = t.src[0]
        return f"{t.op} {w.type.name} {w.ne[0]}x{w.ne[1]} n={t.ne[1]}"
    return t.op_label()


def _profile(m: Model, gi: int, reps: int = 5) -> list[dict]:
    """Kernel groups one by one (no CUDA graph), each timed with CUDA events: the median time of
    each, summed by kind. Runs on whatever inputs the last step left, so it changes no state that
    matters (the KV cells it writes are rewritten by the next step)."""
    plan = m.program.plans[gi]
    times = [m.program.profile(gi) for _ in range(reps)]
    kinds: dict[str, list[float]] = {}
    for i, grp in enumerate(plan.groups):
        k = " + ".join(t.op for t in grp.nodes) if grp.fused else _kind(grp.nodes[0])
        kinds.setdefault(k, []).append(statistics.median(ts[i] for ts in times))
    rows = [{"kind": k, "count": len(v), "ms": round(sum(v), 4)} for k, v in kinds.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--target", default="cuda", choices=("c", "cuda"))
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="write the result here too")
    ap.add_argument("--prepare", action="store_true", help="only compile and build the program, then exit")
    ap.add_argument("--ranks", type=int, default=1, help="tensor-parallel processes (one a GPU for cuda)")
    ap.add_argument("--partial-sums", action="store_true", help="with --ranks: Megatron's all-reduce scheme")
    a = ap.parse_args()
    where = rank_env() if a.ranks > 1 else None
    try:
        if a.prepare:
            res = prepare(a.model, a.target, a.prompt, a.gen, a.ranks, a.partial_sums)
        elif a.ranks > 1 and where is None:  # compile once here, then start the ranks, which run this again
            prepare(a.model, a.target, a.prompt, a.gen, a.ranks, a.partial_sums)
            return launch_ranks(a.ranks, [sys.executable, *sys.argv], a.target).returncode
        else:
            res = bench(a.model, a.target, a.prompt, a.gen, a.reps, a.ranks, a.partial_sums)
    except GgcError as e:
        print(f"ggc_bench: {e}", file=sys.stderr)
        return 2
    if where and where[0]:
        return 0  # rank 0 reports for all
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
