"""Where a CUDA run leaves the C target: feed a prompt step by step to both and print, per step,
the logits' NMSE and both argmaxes (and the greedy path's argmax on CUDA).

    python3 bench/step_diff.py MODEL.gguf [--ctx 4096] [--batch 32] [-p PROMPT] [-n 8]
"""

from __future__ import annotations

import argparse

import numpy as np

from ggc.llm.model import Model


def _drop_fusions(drop: list[str]) -> None:
    """Compile CUDA with some fusions off, into a program cache of its own."""
    if not drop:
        return
    import dataclasses

    import ggc.backends.cuda.emit as emit
    import ggc.llm.model as model

    if "all" in drop:
        drop = ["stores", "siblings", "glu_pairs", "epilogues", "heads", "quantnorm"]
    emit.CUDA_FUSION = dataclasses.replace(emit.CUDA_FUSION, **{d: frozenset() for d in drop if d != "quantnorm"})
    if "quantnorm" in drop:
        emit._quantizes_for = lambda _a, _b: False
    root = model.cache_root() / ("diag-" + "-".join(sorted(drop)))
    model.cache_root = lambda: root
    print(f"fusions off: {', '.join(drop)}")


def _compare_state(c: Model, g: Model, k: int) -> None:
    """Max |difference| of each KV cache tensor (f16) between the C and the CUDA program."""
    worst = []
    for t in c.graphs[1].leafs:
        if t.name.startswith("cache_") and t.type.name == "f16":
            x = np.frombuffer(c.program.get(t, graph=1), dtype=np.float16).astype(np.float32)
            y = np.frombuffer(g.program.get(t, graph=1), dtype=np.float16).astype(np.float32)
            worst.append((float(np.max(np.abs(x - y))), t.name))
    worst.sort(reverse=True)
    print(f"  state after step {k}: " + ", ".join(f"{n} {d:.3e}" for d, n in worst[:4]))


def _node_diff(c: Model, g: Model, tokens: list[int]) -> None:
    """One step run group by group on both programs, each group's outputs read right after it;
    the nodes both keep, in graph order, where they differ."""
    from ggc.oracle.compare import to_float

    gi = 0 if len(tokens) > 1 else 1
    vals = []
    for m in (c, g):
        block = m.input_block(gi)
        m.fillers[gi].fill(block.arrays, tokens, m.n_past)
        block.write()
        m.program.set_n_kv(m.n_past + len(tokens))
        p, got = m.program.plans[gi], {}
        for grp in p.groups:
            m.program.run_group(grp.id, graph=gi)
            for t in grp.outputs:
                if p.has_memory(t):
                    got[t.id] = to_float(t, m.program.get(t, graph=gi))
        vals.append(got)
    shown = 0
    for t in c.graphs[gi].nodes:
        if t.id in vals[0] and t.id in vals[1]:
            x, y = vals[0][t.id], vals[1][t.id]
            e = float(np.sum((x - y) ** 2) / max(float(np.sum(x**2)), 1e-30))
            flag = " <<" if e > 1e-6 else ""
            if shown < 70:
                print(f"  {t.label():40s} {t.op:16s} nmse {e:.3e}{flag}")
                shown += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("-p", "--prompt", default="The old lighthouse keeper")
    ap.add_argument("-n", type=int, default=8, help="generated steps after the prompt")
    ap.add_argument("--drop", default="", help="CUDA fusions to turn off: stores,siblings,glu_pairs,"
                    "epilogues,heads,quantnorm or all (each variant compiles to its own program cache)")
    ap.add_argument("--nodes", type=int, default=-1, help="at this step, run group by group and print "
                    "the first nodes where CUDA leaves C, then stop")
    ap.add_argument("--state", action="store_true", help="also compare the KV cache after each step")
    a = ap.parse_args()
    _drop_fusions([d for d in a.drop.split(",") if d])
    quiet = lambda _m: None  # noqa: E731
    c = Model(a.model, target="c", ctx=a.ctx, batch=a.batch, progress=quiet)
    g = Model(a.model, target="cuda", ctx=a.ctx, batch=a.batch, progress=quiet)
    h = Model(a.model, target="cuda", ctx=a.ctx, batch=a.batch, progress=quiet)  # greedy path
    toks = c.tokenize(a.prompt)
    print(f"ctx {a.ctx} batch {a.batch}: {len(toks)} prompt tokens")
    # the prompt as the model would run it: chunks of B, then single tokens
    nb = len(toks) // a.batch if a.batch > 1 else 0
    steps = [toks[i * a.batch:(i + 1) * a.batch] for i in range(nb)] + [[t] for t in toks[nb * a.batch:]]
    for m in (c, g, h):
        m.reset()
    nxt = 0
    for k in range(len(steps) + a.n):
        step = steps[k] if k < len(steps) else [nxt]
        if k == a.nodes:
            _node_diff(c, g, step)
            break
        lc, lg = c.eval(step), g.eval(step)
        th = h.eval_greedy(step)
        nmse = float(np.sum((lg - lc) ** 2) / max(np.sum(lc**2), 1e-30))
        nxt = int(np.argmax(lc))
        top = np.sort(lc)[-2:]
        if a.state:
            _compare_state(c, g, k)
        print(f"step {k:3d} n_past {c.n_past:4d} len {len(step):2d}: nmse {nmse:.3e} max|d| "
              f"{float(np.max(np.abs(lg - lc))):.3e} argmax c {nxt} cuda {int(np.argmax(lg))} greedy {th} "
              f"(c top-2 gap {float(top[1] - top[0]):.3e}) nan {int(np.isnan(lg).sum())}")
    for m in (c, g, h):
        m.close()


if __name__ == "__main__":
    main()
