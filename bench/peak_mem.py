"""Run a command and report the GPU memory it took at its peak, the same way for every engine.

    python bench/peak_mem.py OUT.json -- COMMAND [ARGS...]

Polls nvidia-smi's device-wide memory.used every 50 ms while the command runs and reports the
peak minus the reading before it started (so the figure includes the CUDA context, the weights,
caches and every buffer, for ggc and llama.cpp alike). The command's exit status is passed on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def used_mib() -> int:
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.split()[0])


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out, cmd = Path(sys.argv[1]), sys.argv[3:]
    base = used_mib()
    peak = base
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, used_mib())
            time.sleep(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    done.set()
    th.join()
    res = {"cmd": " ".join(cmd), "rc": rc, "wall_s": round(time.perf_counter() - t0, 1),
           "baseline_mib": base, "peak_mib": peak - base}
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"peak_mem: {res['peak_mib']} MiB over the baseline ({res['wall_s']} s, rc {rc})", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
