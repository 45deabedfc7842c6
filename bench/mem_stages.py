"""Where a generated CUDA program's GPU memory goes, stage by stage (device-wide memory.used from
nvidia-smi, minus the reading before the program was created).

    python bench/mem_stages.py MODEL.gguf [--prompt 512] [--gen 128]

Stages: the program created (CUDA context, arena, work memory), weights loaded, one prefill of
--prompt tokens, one decode step. Its arena and work sizes are printed beside them, so what is left
is the CUDA context and the runtime's own allocations.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_mem import used_mib  # noqa: E402

from ggc.llm.model import Model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    a = ap.parse_args()
    base = used_mib()
    t0 = time.perf_counter()
    m = Model(a.model, target="cuda", ctx=a.prompt + a.gen, batch=a.prompt)
    rows = [("created and loaded", used_mib() - base)]
    m.eval_greedy([5] * a.prompt)
    rows.append(("after a prefill", used_mib() - base))
    m.eval_greedy([5])
    rows.append(("after a decode step", used_mib() - base))
    plan = m.program.plan
    print(f"{Path(a.model).name}: arena {(plan.size - plan.host_size) / 2**20:.0f} MiB on the GPU, "
          f"{plan.host_size / 2**20:.0f} MiB in host memory ({time.perf_counter() - t0:.0f} s)")
    for name, mib in rows:
        print(f"  {name:24s} {mib:6d} MiB")
    m.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
