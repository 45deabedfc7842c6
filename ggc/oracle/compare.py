"""Per-node comparison: gather a tensor's elements through its strides, NMSE, thresholds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir.graph import Tensor

# test-backend-ops' NMSE thresholds, by op; everything else uses DEFAULT_NMSE.
DEFAULT_NMSE = 1e-7
NMSE_BY_OP = {"MUL_MAT": 5e-4, "MUL_MAT_ID": 5e-4, "FLASH_ATTN_EXT": 5e-4, "SOFT_MAX": 1e-6}

_PLAIN = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i8": np.int8, "i16": np.int16,
          "i32": np.int32, "i64": np.int64}


def threshold(op: str) -> float:
    return NMSE_BY_OP.get(op, DEFAULT_NMSE)


PURE_VIEWS = ("RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE")


def threshold_of(t: Tensor) -> float:
    """A node's NMSE limit. A pure view computes nothing: its bytes are those of the op that wrote
    its memory, so it is held to that op's limit (a RESHAPE of a FLASH_ATTN_EXT to 5e-4, not 1e-7)."""
    if t.op in PURE_VIEWS and t.view_src is not None and not t.view_src.is_leaf:
        return threshold(t.view_src.op)
    return threshold(t.op)


def _gather(data: bytes, ne: tuple[int, ...], nb: tuple[int, ...], width: int) -> np.ndarray:
    """Bytes of each item (an element, or a row of blocks) at offsets sum(i_k * nb_k), i0 fastest."""
    buf = np.frombuffer(data, dtype=np.uint8)
    idx = np.indices(ne[::-1], dtype=np.int64).reshape(len(ne), -1)[::-1]
    offs = np.tensordot(np.asarray(nb, dtype=np.int64), idx, axes=1)
    return buf[offs[:, None] + np.arange(width)[None, :]]


def to_float(t: Tensor, data: bytes) -> np.ndarray:
    """All elements of t as float64 in ggml's logical order (i0 fastest), whatever its strides."""
    if t.nelements == 0:
        return np.zeros(0)
    name = t.type.name
    if name in _PLAIN or name == "bf16":
        dt = np.dtype(_PLAIN.get(name, np.uint16))
        vals = np.ascontiguousarray(_gather(data, t.ne, t.nb, dt.itemsize)).view(dt).reshape(-1)
        if name == "bf16":
            return (vals.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return vals.astype(np.float64)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    rows = _gather(data, (1, *t.ne[1:]), (0, *t.nb[1:]), t.type.row_size(t.ne[0]))
    return dequantize(rows, GGMLQuantizationType[name.upper()]).reshape(-1).astype(np.float64)


def nmse(ref: np.ndarray, out: np.ndarray) -> float:
    """sum((ref-out)^2) / sum(ref^2) as test-backend-ops computes it; NaN anywhere gives NaN."""
    if ref.shape != out.shape:
        return math.inf
    if np.isnan(ref).any() or np.isnan(out).any():
        return math.nan
    both_inf = np.isinf(ref) & np.isinf(out) & (np.sign(ref) == np.sign(out))
    r, o = np.where(both_inf, 0, ref), np.where(both_inf, 0, out)
    den = float(np.sum(r * r))
    num = float(np.sum((r - o) ** 2))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


@dataclass
class NodeResult:
    """One node's check. nmse is the verdict (the node computed on the reference's own inputs);
    chained, when known, is the error after running the whole program on its own values."""

    tensor: Tensor
    nmse: float
    limit: float
    chained: float | None = None
    note: str = ""  # "fused": an intermediate a fused group keeps to itself (its group's output is checked)
    check_chained: bool = False  # chained is a second verdict, held to the same limit

    @property
    def ok(self) -> bool:
        if self.note == "fused":
            return True
        ok = not math.isnan(self.nmse) and self.nmse <= self.limit
        if self.check_chained:
            ok = ok and self.chained is not None and not math.isnan(self.chained) and self.chained <= self.limit
        return ok


def compare(t: Tensor, ref: bytes, out: bytes) -> NodeResult:
    return NodeResult(t, nmse(to_float(t, ref), to_float(t, out)), threshold_of(t))


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return "nan" if math.isnan(x) else f"{x:.2e}"


def format_table(results: list[NodeResult], second: str = "chained") -> str:
    """One line per node; `second` heads the column of NodeResult.chained."""
    chained = any(r.chained is not None for r in results)
    head = f"{'#':>5}  {'node':<34} {'op':<15} {'type':<5} {'shape':<18} {'nmse':>10} {'limit':>8}"
    lines = [head + (f" {second:>10}" if chained else "") + "  ok"]
    for r in results:
        t = r.tensor
        shape = "x".join(str(n) for n in t.ne)
        name = t.name if len(t.name) <= 34 else t.name[:31] + "..."
        nm = "fused" if r.note == "fused" else _fmt(r.nmse)
        line = f"%{t.id:>4}  {name:<34} {t.op:<15} {t.type.name:<5} {shape:<18} {nm:>10} {r.limit:>8.0e}"
        if chained:
            line += f" {_fmt(r.chained):>10}"
        lines.append(line + f"  {'ok' if r.ok else 'FAIL'}")
    n_bad = sum(not r.ok for r in results)
    lines.append(f"{len(results) - n_bad} passed, {n_bad} failed")
    return "\n".join(lines)
