"""`ggc dot`: a graph as Graphviz DOT, one drawn node per IR tensor, grouped by transformer layer."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ..errors import GgcError
from ..ir.graph import Graph, Tensor
from .summary import is_view, shape_str

FORMATS = ("svg", "png", "pdf", "dot")
DOT_MISSING = "graphviz 'dot' not found: install graphviz (apt-get install graphviz)"

# llama.cpp's layer markers: "attn_norm-0", "blk.0.attn_q.weight", "cache_k_l0".
_LAYER_RES = (re.compile(r"^blk\.(\d+)\."), re.compile(r"-(\d+)$"), re.compile(r"_l(\d+)$"))
# ggml appends " (view)", " (reshaped)", " (copy of X)"... to derived names; the layer is before them.
_SUFFIX_RE = re.compile(r"(\s*\([^()]*\))+$")

# Per role: node attributes. Leafs are drawn smaller than compute nodes.
_STYLE = {
    "node": 'shape=box style="rounded,filled" fillcolor="#dae8fc"',
    "view": 'shape=box style="dashed" fontsize=8 height=0.2 color="#888888" fontcolor="#555555"',
    "write": 'shape=box style="rounded,filled,dashed" fillcolor="#fde9e7"',
    "weight": 'shape=box style=filled fillcolor="#fff2cc" fontsize=8 height=0.2',
    "input": 'shape=invhouse style=filled fillcolor="#d5e8d4" fontsize=9',
    "state": 'shape=cylinder style=filled fillcolor="#f8cecc" fontsize=9',
    "constant": 'shape=box style=filled fillcolor="#eeeeee" fontsize=8 height=0.2',
}
_VIEW_EDGE = " [style=dashed penwidth=0.5]"
# View ops that still run a kernel: they copy their other sources into the memory they alias.
_WRITES = frozenset({"CPY", "SET_ROWS"})


def layer_of(name: str) -> int | None:
    """The layer index in a llama.cpp tensor name, or None."""
    base = _SUFFIX_RE.sub("", name)
    for r in _LAYER_RES:
        m = r.search(base)
        if m:
            return int(m.group(1))
    return None


def kind_of(t: Tensor) -> str:
    """Which _STYLE a tensor gets; role flags win over view-ness so a flagged leaf keeps its colour."""
    for flag in ("weight", "state", "input"):
        if flag in t.flags:
            return flag
    if t.op in _WRITES:
        return "write"
    if is_view(t):
        return "view"
    return "constant" if t.is_leaf else "node"


def escape(s: str) -> str:
    """Text for a DOT quoted string; non-printable characters are shown as \\xNN, never passed through."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append("".join(f"\\\\x{b:02x}" for b in ch.encode("utf-8")))
    return "".join(out)


def quote(s: str) -> str:
    return '"' + escape(s) + '"'


def _label(t: Tensor, kind: str) -> str:
    """Name on one line; op (for a leaf, whose op is NONE, its role), type and shape on the next."""
    head = f"%{t.id} {t.name}" if t.name else f"%{t.id}"
    what = kind if t.is_leaf else t.op
    return '"' + escape(head) + "\\n" + escape(f"{what}  {t.type.name} {shape_str(t.ne)}") + '"'


def _root(t: Tensor) -> Tensor:
    """The tensor that owns the memory t aliases (t itself when it is no view)."""
    while t.view_src is not None:
        t = t.view_src
    return t


def _layers(graph: Graph) -> dict[int, int | None]:
    """Tensor id -> layer; an unmarked view joins its parent's layer so it is drawn next to it."""
    out: dict[int, int | None] = {}
    for t in graph.tensors:
        n = layer_of(t.name)
        if n is None and t.view_src is not None:
            n = out.get(t.view_src.id)
        out[t.id] = n
    return out


def to_dot(graph: Graph) -> str:
    """DOT text: every tensor once (node id t<ID>), layers as clusters, edges from source to user."""
    lines = ["digraph ggraph {", "  rankdir=TB;", '  graph [fontname="Helvetica"];',
             '  node [fontname="Helvetica" fontsize=10];',
             '  edge [arrowsize=0.6 color="#444444"];']
    if graph.meta:
        meta = " ".join(f"{k}={v}" for k, v in graph.meta.items())
        lines += [f"  label={quote(meta)};", "  labelloc=t;"]
    layers = _layers(graph)
    outputs = {t.id for t in graph.outputs()}
    top: list[str] = []
    clusters: dict[int, list[str]] = {}
    for t in graph.tensors:
        kind = kind_of(t)
        attrs = _STYLE[kind] + (" penwidth=2" if t.id in outputs else "")
        n = layers[t.id]
        (top if n is None else clusters.setdefault(n, [])).append(f"t{t.id} [label={_label(t, kind)} {attrs}];")
    lines += [f"  {s}" for s in top]
    for n in sorted(clusters):
        lines += [f"  subgraph cluster_layer_{n} {{", f'    label="layer {n}";',
                  '    style=rounded; color="#999999";']
        lines += [f"    {s}" for s in clusters[n]]
        lines.append("  }")
    for t in graph.tensors:
        srcs = list(dict.fromkeys(s for s in t.src if s is not None))  # one edge per distinct source
        for s in srcs:
            # The edge from the memory a view aliases moves no data: thin and dashed. A write's
            # other sources (CPY's src 0, SET_ROWS' rows) are real data flow and stay solid.
            aliased = t.opdef.view and _root(s) is _root(t)
            lines.append(f"  t{s.id} -> t{t.id}{_VIEW_EDGE if aliased else ''};")
        if t.view_src is not None and all(_root(s) is not _root(t) for s in srcs):
            lines.append(f"  t{t.view_src.id} -> t{t.id}{_VIEW_EDGE};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(graph: Graph, out: Path, fmt: str | None = None) -> None:
    """Write the graph to `out` as svg, png, pdf (through graphviz's `dot`) or dot; fmt defaults to the suffix.

    The file appears complete or not at all: output goes to a temporary file in the same folder, then is renamed.
    """
    out = Path(out)
    fmt = (fmt or out.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise GgcError(f"{out}: unknown output format {fmt!r} (use one of {', '.join(FORMATS)})")
    exe = None
    if fmt != "dot":
        exe = shutil.which("dot")
        if exe is None:
            raise GgcError(DOT_MISSING)
    text = to_dot(graph)
    # Same folder, so the rename is atomic; pid in the name so two runs do not share it.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if exe is None:
            tmp.write_text(text, encoding="utf-8")
        else:
            proc = subprocess.run([exe, f"-T{fmt}", "-o", str(tmp)], input=text.encode("utf-8"),
                                  capture_output=True, check=False)
            if proc.returncode != 0:
                err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
                raise GgcError(f"dot failed (exit {proc.returncode}): {err[-1] if err else 'no message'}")
        tmp.replace(out)
    except OSError as e:
        raise GgcError(f"{out}: cannot write: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
