"""`ggc show`: a readable text report of a graph: counts, memory by role and type, I/O, largest tensors."""

from __future__ import annotations

from collections import Counter

from ..ir.graph import Graph, Tensor

# Memory roles in report order. Views are not a memory role: they alias their parent's bytes.
ROLES = ("weights", "state", "inputs", "intermediates", "constants")


def human_bytes(n: int) -> str:
    """Binary units, one decimal: 512 B, 4.0 KiB, 1.2 MiB."""
    if n < 1024:
        return f"{n} B"
    x = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        x /= 1024
        if x < 1024 or unit == "TiB":
            break
    return f"{x:.1f} {unit}"


def is_view(t: Tensor) -> bool:
    """A view op, or any tensor with a view parent (ggml's in-place ops): it owns no memory."""
    return t.view_src is not None or t.opdef.view


def role(t: Tensor) -> str | None:
    """The memory role of a tensor, or None for a view (its bytes belong to its parent)."""
    if is_view(t):
        return None
    if "weight" in t.flags:
        return "weights"
    if "state" in t.flags:
        return "state"
    if "input" in t.flags:
        return "inputs"
    return "constants" if t.is_leaf else "intermediates"


def shape_str(ne: tuple[int, ...]) -> str:
    """ne without its trailing 1s (ggml pads to 4 dims): [4096, 7]."""
    dims = list(ne)
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return "[" + ", ".join(map(str, dims)) + "]"


def printable(s: str) -> str:
    """One line whatever the name holds: control characters shown as \\xNN."""
    return "".join(c if c.isprintable() else "".join(f"\\x{b:02x}" for b in c.encode()) for c in s)


def _n(count: int, what: str) -> str:
    return f"{count} {what}" if count == 1 else f"{count} {what}s"


def _describe(t: Tensor) -> str:
    name = f" {printable(t.name)}" if t.name else ""
    return f"%{t.id}{name}  {t.type.name} {shape_str(t.ne)}"


def _table(rows: list[list[str]], indent: str = "  ", right: frozenset[int] = frozenset()) -> list[str]:
    """Columns padded to their widest cell; columns in `right` are right-aligned (numbers)."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def summarize(graph: Graph, top: int = 10) -> str:
    """The report as text; the same graph always gives the same text."""
    ts = graph.tensors
    nodes = graph.nodes
    lines = [f"graph: {_n(len(ts), 'tensor')} ({_n(len(nodes), 'node')}, {_n(len(ts) - len(nodes), 'leaf')})"]
    if graph.meta:
        lines.append("meta: " + " ".join(f"{k}={printable(str(v))}" for k, v in graph.meta.items()))

    lines += ["", "nodes by op:"]
    ops = Counter(t.op for t in nodes)
    # Ties broken by name so the order does not depend on the graph's order.
    lines += _table([[op, str(n)] for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))],
                    right=frozenset({1}))
    if not ops:
        lines.append("  (none)")

    lines += ["", "memory by role:"]
    by_role: dict[str, dict[str, list[Tensor]]] = {r: {} for r in ROLES}
    views: list[Tensor] = []
    for t in ts:
        r = role(t)
        if r is None:
            views.append(t)
        else:
            by_role[r].setdefault(t.type.name, []).append(t)
    rows: list[list[str]] = []
    total = 0
    for r in ROLES:
        groups = by_role[r]
        size = sum(t.nbytes for g in groups.values() for t in g)
        count = sum(len(g) for g in groups.values())
        total += size
        rows.append([r, human_bytes(size), f"({_n(count, 'tensor')})"])
        per_type = sorted(groups.items(), key=lambda kv: (-sum(t.nbytes for t in kv[1]), kv[0]))
        for tname, g in per_type:
            rows.append([f"  {tname}", human_bytes(sum(t.nbytes for t in g)), f"({len(g)})"])
    rows.append(["total", human_bytes(total), ""])
    lines += _table(rows, right=frozenset({1}))
    lines.append(f"  views: {_n(len(views), 'tensor')}, counted nowhere (they own no memory: they alias their parent)")

    for title, group in (
        ("inputs", [t for t in ts if "input" in t.flags]),
        ("outputs", graph.outputs()),
        ("state", [t for t in ts if "state" in t.flags]),
    ):
        lines += ["", f"{title}:"]
        lines += [f"  {_describe(t)}" for t in group] or ["  (none)"]

    owners = sorted((t for t in ts if not is_view(t)), key=lambda t: (-t.nbytes, t.id))[: max(top, 0)]
    lines += ["", f"largest tensors (top {len(owners)}, views excluded):"]
    head = ["id", "name", "op", "role", "type", "shape", "bytes"]
    rows = [[f"%{t.id}", printable(t.name) or "-", t.op, role(t) or "", t.type.name, shape_str(t.ne),
             human_bytes(t.nbytes)] for t in owners]
    lines += _table([head] + rows, right=frozenset({6}))
    return "\n".join(lines) + "\n"
