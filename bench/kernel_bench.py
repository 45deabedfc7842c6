"""Single-kernel timings on the GPU: the matrix products of the bench models' decode and prefill.

    python bench/kernel_bench.py [--json OUT] [--min-cols N]

Each MUL_MAT runs back to back through the CUDA harness (ggc_cuda_bench_node: CUDA events, mean
of 200 runs after 20 warm-ups, src1's conversion included) on random weights; the figure that
matters for decode is the weight bytes read per second, against the copy bandwidth. q4_0 weights
of whole 8-block groups a row run regrouped, as the generated programs keep them (type q4_0r8).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ggc.backends.cuda.abi import bench_node  # noqa: E402
from ggc.ir.graph import Tensor  # noqa: E402
from ggc.ir.types import contiguous_strides, get_type  # noqa: E402

# (weight type, K, N, columns): Llama-2-7B and Llama-3.2-1B decode shapes, and a prefill one
CASES = [("q4_0", 4096, 4096, 1), ("q4_0", 4096, 11008, 1), ("q4_0", 11008, 4096, 1), ("q6_K", 4096, 32000, 1),
         ("q4_0", 2048, 2048, 1), ("q4_0", 2048, 512, 1), ("q4_0", 2048, 8192, 1), ("q4_0", 8192, 2048, 1),
         ("q6_K", 2048, 128256, 1), ("f16", 2048, 8192, 1), ("f16", 8192, 2048, 1), ("f16", 2048, 2048, 1),
         ("q4_K", 4096, 4096, 1), ("q8_0", 4096, 4096, 1), ("q4_0", 4096, 4096, 4),
         ("q4_0", 4096, 4096, 512), ("q4_0", 4096, 11008, 512), ("q4_0", 11008, 4096, 512),
         ("q4_0", 2048, 8192, 512), ("q4_0", 2048, 2048, 512), ("q8_0", 4096, 4096, 512), ("f16", 2048, 8192, 512)]


def _tensor(tid: int, tname: str, ne: tuple[int, int, int, int], **kw: object) -> Tensor:
    t = get_type(tname)
    return Tensor(tid, t, ne, contiguous_strides(t, ne), **kw)  # type: ignore[arg-type]


def _weights(tname: str, k: int, n: int, rng: np.random.Generator) -> bytes:
    t = get_type(tname)
    if tname == "f16":
        return (rng.standard_normal(k * n, dtype=np.float32) * k**-0.5).astype(np.float16).tobytes()
    raw = bytearray(rng.integers(0, 256, t.row_size(k) * n, dtype=np.uint8).tobytes())
    return bytes(raw)  # timing only: the values do not matter, but scales stay whatever the bytes say


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    ap.add_argument("--min-cols", type=int, default=1, help="only the products of at least this many columns")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for tname, k, n, cols in [c for c in CASES if c[3] >= a.min_cols]:
        w = _tensor(0, tname, (k, n, 1, 1), name="w")
        x = _tensor(1, "f32", (k, cols, 1, 1), name="x")
        y = _tensor(2, "f32", (n, cols, 1, 1), op="MUL_MAT", src=[w, x], name="y")
        xs = rng.standard_normal(k * cols, dtype=np.float32).tobytes()
        r8 = tname == "q4_0" and k % 256 == 0  # as GPU programs keep q4_0 weights (GGC_TYPE_Q4_0R8)
        ms = bench_node(y, [_weights(tname, k, n, rng), xs], warmup=20, iters=200, regroup=r8)
        wbytes = get_type(tname).row_size(k) * n
        row = {"type": tname + ("r8" if r8 else ""), "K": k, "N": n, "cols": cols, "us": round(ms * 1e3, 2),
               "weight_GBps": round(wbytes / ms / 1e6, 1), "TFLOPs": round(2 * k * n * cols / ms / 1e9, 2)}
        rows.append(row)
        print(f"{row['type']:6} K={k:6} N={n:6} cols={cols:4}: {row['us']:9.2f} us  {row['weight_GBps']:8.1f} GB/s  "
              f"{row['TFLOPs']:7.2f} TFLOP/s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
