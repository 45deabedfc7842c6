"""The .ggraph text format: one tensor per line, topological order. Spec: docs/FORMAT.md.

write(graph) -> str and parse(text) -> Graph are exact inverses: write(parse(write(g))) is
byte-identical to write(g). Every malformed input raises ParseError with file:line:col.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..errors import ParseError
from ..ir import ops as opt
from ..ir.graph import (
    ALL_FLAGS,
    GgufData,
    Graph,
    InlineData,
    ParamValue,
    Tensor,
    ValidationError,
    check_tensor,
)
from ..ir.types import TYPES

MAGIC = "ggraph"
VERSION = 1
MAX_INLINE_BYTES = 1 << 16
FIELD_ORDER = ("ne", "nb", "src", "view", "params", "raw", "flags", "data", "name")
REQUIRED = ("ne", "nb")

_OP_RE = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_KEY_RE = re.compile(r"[a-z_][a-z0-9_]*\Z")


# ---------------------------------------------------------------- writing


def fmt_f32(x: float) -> str:
    """Shortest decimal that reads back to the same float32."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    s = str(np.float32(x))
    return s if any(c in s for c in ".en") else s + ".0"


def quote(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
    out.append('"')
    return "".join(out)


def _fmt_param(t: Tensor, name: str, v: ParamValue) -> str:
    p = t.opdef.param(name)
    if p is not None and p.kind == "f32":
        return f"{name}={fmt_f32(float(v))}"
    return f"{name}={v}"


def format_tensor(t: Tensor) -> str:
    op = t.op if opt.is_known(t.op) else opt.OPAQUE_PREFIX + t.op
    parts = [f"%{t.id} = {op} {t.type.name}"]
    parts.append("ne=[" + ",".join(map(str, t.ne)) + "]")
    parts.append("nb=[" + ",".join(map(str, t.nb)) + "]")
    if t.src:
        parts.append("src=[" + ",".join("_" if s is None else f"%{s.id}" for s in t.src) + "]")
    if t.view_src is not None:
        parts.append(f"view=%{t.view_src.id}+{t.view_offs}")
    if t.params:
        order = [p.name for p in t.opdef.params]
        items = sorted(t.params.items(), key=lambda kv: order.index(kv[0]))
        parts.append("params={" + ",".join(_fmt_param(t, k, v) for k, v in items) + "}")
    if t.raw:
        parts.append("raw={" + ",".join(f"{i}=0x{w:08x}" for i, w in sorted(t.raw.items())) + "}")
    if t.flags:
        parts.append("flags=" + ",".join(f for f in ALL_FLAGS if f in t.flags))
    if isinstance(t.data, GgufData):
        parts.append("data=gguf:" + quote(t.data.name) + ("" if t.data.split is None else f"[split={t.data.split}]"))
    elif isinstance(t.data, InlineData):
        parts.append("data=hex:" + t.data.data.hex())
    parts.append("name=" + quote(t.name))
    return " ".join(parts)


def write(g: Graph) -> str:
    lines = [f"{MAGIC} {VERSION}"]
    for k, v in g.meta.items():
        lines.append(f"meta {k}=" + (quote(v) if isinstance(v, str) else str(v)))
    lines.extend(format_tensor(t) for t in g.tensors)
    return "\n".join(lines) + "\n"


def save(g: Graph, path: str | Path) -> None:
    """Write atomically: a partial file never replaces a good one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(write(g), encoding="ascii")
    tmp.replace(path)


# ---------------------------------------------------------------- parsing


class _Cursor:
    """A position in one line; every error it raises names file, line and column."""

    def __init__(self, file: str, lineno: int, text: str) -> None:
        self.file, self.lineno, self.text, self.pos = file, lineno, text, 0

    def error(self, msg: str, pos: int | None = None) -> ParseError:
        return ParseError(self.file, self.lineno, (self.pos if pos is None else pos) + 1, msg)

    def eof(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, s: str) -> None:
        if not self.text.startswith(s, self.pos):
            got = self.text[self.pos : self.pos + 12] or "end of line"
            raise self.error(f"expected {s!r}, got {got!r}")
        self.pos += len(s)

    def word(self, stop: str = " =,]}+[{") -> tuple[str, int]:
        """A run of characters up to one of `stop` (by default a space, '=', ',', brackets or '+')."""
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stop:
            self.pos += 1
        if self.pos == start:
            raise self.error("expected a value" if not self.eof() else "unexpected end of line")
        return self.text[start : self.pos], start

    def integer(self, what: str) -> int:
        w, start = self.word()
        try:
            return int(w, 0) if w.lower().startswith(("0x", "-0x")) else int(w, 10)
        except ValueError:
            raise self.error(f"bad integer {w!r} for {what}", start) from None

    def f32(self, what: str) -> float:
        w, start = self.word(stop=" =,]}[{")  # '+' may appear in an exponent
        if w not in ("nan", "inf", "-inf") and not re.fullmatch(r"-?\d+(\.\d*)?(e[-+]?\d+)?", w):
            raise self.error(f"bad number {w!r} for {what}", start)
        x = float(w)
        with np.errstate(over="ignore"):
            f = np.float32(x)
        if np.isinf(f) and not math.isinf(x):
            raise self.error(f"{what}={w} does not fit a float32", start)
        return float(f)

    def string(self) -> str:
        if self.peek() != '"':
            raise self.error("expected a quoted string")
        start = self.pos
        self.pos += 1
        out = bytearray()
        while True:
            if self.eof():
                raise self.error("unterminated string", start)
            ch = self.text[self.pos]
            if ch == '"':
                self.pos += 1
                break
            if ch == "\\":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if nxt in ('"', "\\"):
                    out += nxt.encode()
                    self.pos += 2
                elif nxt == "x" and re.fullmatch(r"[0-9a-f]{2}", self.text[self.pos + 2 : self.pos + 4]):
                    out.append(int(self.text[self.pos + 2 : self.pos + 4], 16))
                    self.pos += 4
                else:
                    raise self.error("bad escape in string (use \\\", \\\\ or \\xNN)")
            else:
                out += ch.encode()
                self.pos += 1
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("string is not valid UTF-8", start) from None

    def ref(self, n_defined: int) -> int:
        start = self.pos
        self.expect("%")
        tid = self.integer("a tensor reference")
        if tid < 0:
            raise self.error(f"bad tensor reference %{tid}", start)
        if tid >= n_defined:
            raise self.error(f"%{tid} is used before it is defined (forward reference or cycle)", start)
        return tid

    def int_list(self, what: str) -> list[int]:
        self.expect("[")
        vals: list[int] = []
        while True:
            vals.append(self.integer(what))
            if self.peek() == ",":
                self.pos += 1
                continue
            self.expect("]")
            return vals


def _parse_tensor(c: _Cursor, tensors: list[Tensor]) -> Tensor:
    start = c.pos
    c.expect("%")
    tid = c.integer("the tensor id")
    if tid != len(tensors):
        raise c.error(f"tensor id %{tid} out of sequence: expected %{len(tensors)}", start)
    c.expect(" = ")
    opos = c.pos
    opaque = c.text.startswith(opt.OPAQUE_PREFIX, c.pos)
    if opaque:
        c.pos += len(opt.OPAQUE_PREFIX)
    op, _ = c.word()
    if not _OP_RE.match(op):
        raise c.error(f"bad op name {op!r}", opos)
    if opaque and opt.is_known(op):
        raise c.error(f"{op} is a known op: write it without {opt.OPAQUE_PREFIX!r}", opos)
    if not opaque and not opt.is_known(op):
        raise c.error(f"unknown op {op!r} (an op unknown to ggc is written {opt.OPAQUE_PREFIX}{op})", opos)
    c.expect(" ")
    tname, tpos = c.word()
    if tname not in TYPES:
        raise c.error(f"unknown type {tname!r}", tpos)
    fields: dict[str, object] = {}
    fpos: dict[str, int] = {}
    d = opt.lookup(op)
    while not c.eof():
        c.expect(" ")
        key, kpos = c.word()
        if key not in FIELD_ORDER:
            raise c.error(f"unknown field {key!r}", kpos)
        if key in fields:
            raise c.error(f"field {key!r} given twice", kpos)
        if fields and FIELD_ORDER.index(key) < max(FIELD_ORDER.index(k) for k in fields):
            raise c.error(f"field {key!r} out of order (order is {' '.join(FIELD_ORDER)})", kpos)
        c.expect("=")
        fpos[key] = c.pos
        if key in ("ne", "nb"):
            vals = c.int_list(key)
            if len(vals) != opt.MAX_DIMS:
                raise c.error(f"{key} needs {opt.MAX_DIMS} entries, got {len(vals)}", fpos[key])
            fields[key] = tuple(vals)
        elif key == "src":
            c.expect("[")
            srcs: list[Tensor | None] = []
            while True:
                if c.peek() == "_":
                    c.pos += 1
                    srcs.append(None)
                else:
                    srcs.append(tensors[c.ref(len(tensors))])
                if c.peek() == ",":
                    c.pos += 1
                    continue
                c.expect("]")
                break
            if len(srcs) > opt.MAX_SRC:
                raise c.error(f"at most {opt.MAX_SRC} sources, got {len(srcs)}", fpos[key])
            if srcs[-1] is None:
                raise c.error("trailing empty source slot", fpos[key])
            fields[key] = srcs
        elif key == "view":
            parent = tensors[c.ref(len(tensors))]
            c.expect("+")
            offs = c.integer("the view offset")
            if offs < 0:
                raise c.error("negative view offset", fpos[key])
            fields[key] = (parent, offs)
        elif key == "params":
            c.expect("{")
            params: dict[str, ParamValue] = {}
            while c.peek() != "}":
                pname, ppos = c.word()
                p = d.param(pname)
                if p is None:
                    raise c.error(f"{op} has no parameter {pname!r}", ppos)
                if pname in params:
                    raise c.error(f"parameter {pname!r} given twice", ppos)
                c.expect("=")
                if p.kind == "f32":
                    params[pname] = c.f32(pname)
                elif p.kind in ("unary", "glu"):
                    v, vpos = c.word()
                    if not _OP_RE.match(v):
                        raise c.error(f"bad {p.kind} op name {v!r}", vpos)
                    params[pname] = v
                else:
                    v = c.integer(pname)
                    if not -(1 << 31) <= v < (1 << 31):
                        raise c.error(f"{pname}={v} does not fit an int32", fpos[key])
                    params[pname] = v
                if c.peek() == ",":
                    c.pos += 1
                elif c.peek() != "}":
                    raise c.error("expected ',' or '}' in params")
            c.expect("}")
            fields[key] = params
        elif key == "raw":
            c.expect("{")
            raw: dict[int, int] = {}
            while c.peek() != "}":
                wpos = c.pos
                w = c.integer("an op_params word index")
                if not 0 <= w < opt.N_PARAM_WORDS or w in raw:
                    raise c.error(f"bad or repeated op_params word index {w}", wpos)
                c.expect("=")
                v = c.integer("an op_params word")
                if not 0 <= v < (1 << 32):
                    raise c.error(f"op_params word {v} does not fit 32 bits", wpos)
                raw[w] = v
                if c.peek() == ",":
                    c.pos += 1
                elif c.peek() != "}":
                    raise c.error("expected ',' or '}' in raw")
            c.expect("}")
            fields[key] = raw
        elif key == "flags":
            flags = []
            while True:
                f, ffpos = c.word()
                if f not in ALL_FLAGS:
                    raise c.error(f"unknown flag {f!r} (flags are {','.join(ALL_FLAGS)})", ffpos)
                flags.append(f)
                if c.peek() != ",":
                    break
                c.pos += 1
            fields[key] = frozenset(flags)
        elif key == "data":
            if c.text.startswith("gguf:", c.pos):
                c.pos += 5
                name = c.string()
                split = None
                if c.text.startswith("[split=", c.pos):
                    c.pos += 7
                    spos = c.pos
                    split = c.integer("split dimension")
                    if not 0 <= split < 4:
                        raise c.error(f"split dimension {split} is not 0..3", spos)
                    c.expect("]")
                fields[key] = GgufData(name, split)
            elif c.text.startswith("hex:", c.pos):
                c.pos += 4
                m = re.compile(r"[0-9a-f]*").match(c.text, c.pos)
                digits = m.group(0) if m else ""
                if not digits or len(digits) % 2:
                    raise c.error("inline data needs an even, non-zero number of lowercase hex digits")
                if len(digits) // 2 > MAX_INLINE_BYTES:
                    raise c.error(f"inline data over {MAX_INLINE_BYTES} bytes")
                c.pos += len(digits)
                fields[key] = InlineData(bytes.fromhex(digits))
            else:
                raise c.error("data must be gguf:\"NAME\" or hex:BYTES")
        elif key == "name":
            fields[key] = c.string()
    for key in REQUIRED:
        if key not in fields:
            raise c.error(f"missing field {key!r}")
    view = fields.get("view")
    t = Tensor(
        id=tid,
        type=TYPES[tname],
        ne=fields["ne"],  # type: ignore[arg-type]
        nb=fields["nb"],  # type: ignore[arg-type]
        op=op,
        params=fields.get("params", {}),  # type: ignore[arg-type]
        raw=fields.get("raw", {}),  # type: ignore[arg-type]
        src=fields.get("src", []),  # type: ignore[arg-type]
        view_src=view[0] if view else None,  # type: ignore[index]
        view_offs=view[1] if view else 0,  # type: ignore[index]
        flags=fields.get("flags", frozenset()),  # type: ignore[arg-type]
        name=fields.get("name", ""),  # type: ignore[arg-type]
        data=fields.get("data"),  # type: ignore[arg-type]
    )
    try:
        check_tensor(t)
    except ValidationError as e:
        raise c.error(str(e), start) from None
    return t


def parse(text: str, file: str = "<string>") -> Graph:
    g = Graph()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif text:
        raise ParseError(file, len(lines), len(lines[-1]) + 1, "file does not end with a newline (truncated?)")
    if not lines:
        raise ParseError(file, 1, 1, f"empty file: expected '{MAGIC} {VERSION}'")
    head = lines[0].split(" ")
    if head[0] != MAGIC:
        raise ParseError(file, 1, 1, f"not a .ggraph file: expected '{MAGIC} {VERSION}'")
    if len(head) != 2 or not head[1].isdigit():
        raise ParseError(file, 1, len(MAGIC) + 2, "expected a version number after 'ggraph'")
    if int(head[1]) != VERSION:
        raise ParseError(file, 1, len(MAGIC) + 2, f"unsupported version {head[1]} (this reader knows {VERSION})")
    for lineno, line in enumerate(lines[1:], start=2):
        c = _Cursor(file, lineno, line)
        if not line or line.startswith("#"):
            continue
        if "\t" in line or "\r" in line:
            raise c.error("tabs and carriage returns are not allowed", max(line.find("\t"), line.find("\r")))
        if line.startswith("meta "):
            if g.tensors:
                raise c.error("meta lines must come before the first tensor")
            c.pos = 5
            key, kpos = c.word()
            if not _KEY_RE.match(key):
                raise c.error(f"bad meta key {key!r}", kpos)
            if key in g.meta:
                raise c.error(f"meta key {key!r} given twice", kpos)
            c.expect("=")
            g.meta[key] = c.string() if c.peek() == '"' else c.integer(key)
            if not c.eof():
                raise c.error("unexpected text after meta value")
            continue
        if not line.startswith("%"):
            raise c.error("expected a tensor line ('%N = OP type ...'), 'meta', or a '#' comment")
        g.tensors.append(_parse_tensor(c, g.tensors))
    return g


def load(path: str | Path) -> Graph:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ParseError(str(path), 0, 0, f"cannot read: {e.strerror}") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ParseError(str(path), line, col, "non-ASCII byte (names escape it as \\xNN)") from None
    return parse(text, str(path))
