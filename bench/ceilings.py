"""The device's ceilings, measured in the bench run itself: copy bandwidth and bf16 matrix rate.

    python bench/ceilings.py [--json OUT]

Uses PyTorch (in the GPU machine's image) as a measuring instrument only; generated programs do not
use it. Copy: a device-to-device copy of a 2 GiB buffer, bytes read plus bytes written over time.
Matrix: an 8192^3 bf16 product on random data. Both: CUDA events, 3 warm-ups, median of 20.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _time_ms(fn, reps: int = 20, warm: int = 3) -> float:  # noqa: ANN001 - a callable
    import torch

    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def measure() -> dict:
    import torch

    n = 2 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    src.fill_(1)
    copy_ms = _time_ms(lambda: dst.copy_(src))  # noqa: F821 - ruff misreads the del below
    del src, dst
    k = 8192
    x = torch.randn(k, k, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(k, k, device="cuda", dtype=torch.bfloat16)
    mm_ms = _time_ms(lambda: torch.mm(x, y))
    return {
        "device": torch.cuda.get_device_name(0),
        "copy_GBps": 2 * n / copy_ms / 1e6,
        "bf16_TFLOPs": 2 * k**3 / mm_ms / 1e9,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    a = ap.parse_args()
    res = measure()
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
