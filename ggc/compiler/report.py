"""`ggc plan`: the arena plan as text, and as a picture (tensors as bars over time against offset)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import GgcError
from ..inspect.summary import human_bytes
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
