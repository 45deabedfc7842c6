"""One ggc decode step (and optionally one prefill step) inside a profiler range, for `ncu --profile-from-start off`.

    ncu --profile-from-start off ... python bench/ncu_step.py MODEL.gguf [--prompt 512] [--gen 128] [--prefill]

The program is the one bench/ggc_bench.py builds for the same --prompt/--gen (taken from the cache). The prompt is
evaluated first so that the profiled decode step attends to --prompt cells, as the bench's decode does.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ggc.llm.model import Model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--prefill", action="store_true", help="profile the prompt's prefill step too")
    a = ap.parse_args()
    cuda = ctypes.CDLL("libcuda.so.1")
    m = Model(a.model, target="cuda", ctx=a.prompt + a.gen, batch=a.prompt)
    prompt = [int(x) for x in np.random.default_rng(0).integers(3, m.n_vocab, a.prompt)]
    m.eval(prompt)  # warm: the graphs are recorded
    tok = 5
    for _ in range(2):
        m.eval([tok])
    m.reset()
    if a.prefill:
        cuda.cuProfilerStart()
    m.eval(prompt)
    if a.prefill:
        cuda.cuProfilerStop()
    m.eval([tok])
    cuda.cuProfilerStart()
    m.eval([tok])
    cuda.cuProfilerStop()
    m.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
