"""`ggc plan`: the arena plan as text, and as a picture (tensors as bars over time against offset)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import GgcError
from ..inspect.summary import human_bytes
from ..ir.graph import Tensor
from .arena import REGIONS, Plan


def text_report(p: Plan, ggml_alloc: int | None = None) -> str:
    scratch = p.region_size["scratch"]
    bound = p.liveness_lower_bound()
    over = 100.0 * (scratch - bound) / bound if bound else 0.0
    fused = sum(1 for g in p.groups if g.fused)
    lines = [
        f"kernel groups: {len(p.groups)} ({fused} fused), nodes live: {len(p.live)} of {len(p.graph.tensors)} tensors",
        f"arena: {human_bytes(p.size)} ({p.size} bytes), alignment 64",
    ]
    for r in REGIONS:
        n = sum(1 for b in p.buffers.values() if b.region == r)
        lines.append(f"  {r:<8} at {p.region_offset[r]:>12}  {human_bytes(p.region_size[r]):>11}  ({n} buffers)")
    lines += [
        "scratch:",
        f"  size                    {scratch:>12} bytes",
        f"  liveness lower bound    {bound:>12} bytes (peak of bytes live at once)",
        f"  over the bound          {over:>11.1f}%",
        f"  in-place reuses         {sum(1 for b in p.buffers.values() if b.shares is not None):>12}",
    ]
    if ggml_alloc is not None:
        ours = p.region_size["io"] + scratch
        lines += [
            "against ggml-alloc on the same graph (inputs, outputs and intermediates):",
            f"  ggml-alloc compute buffer {ggml_alloc:>10} bytes",
            f"  ggc io + scratch          {ours:>10} bytes ({100.0 * (ours - ggml_alloc) / ggml_alloc:+.1f}%)",
        ]
    return "\n".join(lines) + "\n"


def _bytes_read(t: Tensor, s: Tensor) -> int:
    """Bytes node t reads of its source s: all of it, except the rows a GET_ROWS gathers and the
    destination a SET_ROWS writes rows into (not read at all)."""
    if t.op == "GET_ROWS" and s is t.src[0]:
        return s.type.row_size(s.ne[0]) * t.ne[1] * t.ne[2] * t.ne[3]
    if t.op == "SET_ROWS" and s is not t.src[0] and s is not t.src[1]:
        return 0
    return s.nbytes


def _bytes_written(t: Tensor) -> int:
    """Bytes node t stores: its result, or the rows a SET_ROWS writes into its destination."""
    if t.op == "SET_ROWS":
        rows = t.src[0]
        return t.type.row_size(t.ne[0]) * rows.ne[1] * rows.ne[2] * rows.ne[3]
    return t.nbytes


def kernel_report(p: Plan, target: str) -> str:
    """`ggc plan --kernels`: each kernel group of the target with its ops, its result, and the bytes it
    moves (reads: each input from outside the group once, whole, or the rows a GET_ROWS gathers;
    attention reads at most its cache view, fewer cells at run time; writes: the group's outputs,
    or the rows a SET_ROWS stores)."""
    rows, total_r, total_w = [], 0, 0
    for g in p.groups:
        inside = {t.id for t in g.nodes}
        reads = 0
        for s in g.inputs():
            readers = [t for t in g.nodes if any(x is s for x in t.src)]
            reads += max(_bytes_read(t, s) for t in readers) if readers else s.nbytes
        writes = sum(_bytes_written(t) for t in g.outputs if t.id in inside)
        total_r, total_w = total_r + reads, total_w + writes
        ops = " + ".join(t.op_label() for t in g.nodes)
        rows.append((g.id, ops, g.outputs[-1].name or f"%{g.outputs[-1].id}", reads, writes))
    fused = sum(1 for g in p.groups if g.fused)
    w_ops = max([len(r[1]) for r in rows] + [3])
    w_out = max([len(r[2]) for r in rows] + [6])
    lines = [f"kernel groups for target {target}: {len(p.groups)} ({fused} fused); "
             f"{human_bytes(total_r)} read, {human_bytes(total_w)} written",
             f"  {'#':>4}  {'ops':<{w_ops}}  {'result':<{w_out}}  {'reads':>11}  {'writes':>11}"]
    for gid, ops, out, r, w in rows:
        lines.append(f"  {gid:>4}  {ops:<{w_ops}}  {out:<{w_out}}  {human_bytes(r):>11}  {human_bytes(w):>11}")
    return "\n".join(lines) + "\n"


def draw(p: Plan, out: Path) -> None:
    """Scratch buffers as rectangles: x = kernel groups alive, y = byte offset."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        raise GgcError("matplotlib is needed for the plan picture (pip install matplotlib)") from None
    fig, ax = plt.subplots(figsize=(12, 6), dpi=100)
    colors = plt.get_cmap("tab20")
    top = max(p.region_size["scratch"], 1)
    for i, b in enumerate(sorted(p.scratch_buffers(), key=lambda x: x.tensor.id)):
        if b.shares is not None:
            continue
        lo, hi = p._span(b)
        ax.add_patch(Rectangle((lo, b.offset), hi - lo + 1, b.size, facecolor=colors(i % 20), edgecolor="black",
                               linewidth=0.3))
        if b.size > top / 25 and hi - lo >= 2:
            ax.text(lo + 0.2, b.offset + b.size / 2, b.tensor.name[:20], fontsize=6, va="center")
    bound = p.liveness_lower_bound()
    ax.axhline(bound, color="red", linestyle="--", linewidth=1, label=f"liveness lower bound {human_bytes(bound)}")
    ax.set_xlim(0, len(p.groups) + 1)
    ax.set_ylim(0, top * 1.05)
    ax.set_xlabel("kernel group (time)")
    ax.set_ylabel("scratch offset (bytes)")
    meta = p.graph.meta
    ax.set_title(f"ggc arena plan: {meta.get('model', '')} N={meta.get('n_tokens', '?')}, scratch "
                 f"{human_bytes(p.region_size['scratch'])}")
    ax.legend(loc="upper right")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp)
        tmp.replace(out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
