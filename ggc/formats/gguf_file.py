"""A validating GGUF reader: header, metadata, tensor table and tensor bytes.

Every count, length and offset is checked against the file before use, so a truncated or
hostile file gives a GgcError naming the file and the byte offset, never a crash or a huge
allocation. Tensor data is read through a memory map.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import GgcError
from ..ir.types import TYPES, GGMLType, contiguous_strides

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_STRING = 1 << 24
MAX_DIMS = 4

# GGUF metadata value types (gguf spec): number -> struct format (None: string/array).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# GGUF stores ggml type numbers; these are the file format's, fixed by the GGUF spec.
GGUF_TYPE_NAMES = {
    0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 9: "q8_1", 10: "q2_K",
    11: "q3_K", 12: "q4_K", 13: "q5_K", 14: "q6_K", 15: "q8_K", 16: "iq2_xxs", 17: "iq2_xs", 18: "iq3_xxs",
    19: "iq1_s", 20: "iq4_nl", 21: "iq3_s", 22: "iq2_s", 23: "iq4_xs", 24: "i8", 25: "i16", 26: "i32",
    27: "i64", 28: "f64", 29: "iq1_m", 30: "bf16", 34: "tq1_0", 35: "tq2_0", 39: "mxfp4", 40: "nvfp4",
    41: "q1_0", 42: "q2_0",
}


@dataclass(frozen=True)
class GgufTensor:
    name: str
    type: GGMLType
    ne: tuple[int, int, int, int]
    offset: int  # absolute offset in the file
    nbytes: int


@dataclass
class GgufFile:
    path: Path
    version: int
    metadata: dict[str, object]
    tensors: list[GgufTensor]
    data_offset: int
    _map: mmap.mmap | None = field(default=None, repr=False)

    def tensor(self, name: str) -> GgufTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise GgcError(f"{self.path}: no tensor {name!r} in this GGUF")

    def data(self, t: GgufTensor) -> bytes:
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map[t.offset : t.offset + t.nbytes]

    def array(self, t: GgufTensor) -> np.ndarray:
        return np.frombuffer(self.data(t), dtype=np.uint8)


class _Reader:
    def __init__(self, path: Path, buf: bytes | mmap.mmap) -> None:
        self.path, self.buf, self.pos = path, buf, 0

    def fail(self, msg: str) -> GgcError:
        return GgcError(f"{self.path}: at byte {self.pos}: {msg}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"truncated: needs {n} more bytes, file has {len(self.buf) - self.pos}")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(b)

    def u(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.u("Q")
        if n > MAX_STRING:
            raise self.fail(f"string length {n} is implausible")
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("string is not UTF-8") from None

    def value(self, vtype: int, depth: int = 0) -> object:
        if vtype in _SCALARS:
            return self.u(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY and depth == 0:
            etype, n = self.u("I"), self.u("Q")
            if etype in _SCALARS:
                size = struct.calcsize(_SCALARS[etype])
                if n * size > len(self.buf) - self.pos:
                    raise self.fail(f"array of {n} items runs past the end of the file")
                return list(struct.unpack(f"<{n}{_SCALARS[etype]}", self.take(n * size)))
            if n > len(self.buf) - self.pos:
                raise self.fail(f"array of {n} items runs past the end of the file")
            return [self.value(etype, depth + 1) for _ in range(n)]
        raise self.fail(f"bad metadata value type {vtype}")


def read_gguf(path: str | Path) -> GgufFile:
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise GgcError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        size = path.stat().st_size
        if size < 24:
            raise GgcError(f"{path}: not a GGUF file (only {size} bytes)")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    r = _Reader(path, buf)
    if r.take(4) != GGUF_MAGIC:
        raise GgcError(f"{path}: not a GGUF file (bad magic)")
    version = r.u("I")
    if version not in (2, 3):
        raise r.fail(f"unsupported GGUF version {version}")
    n_tensors, n_kv = r.u("Q"), r.u("Q")
    if n_tensors > size // 24 or n_kv > size // 12:
        raise r.fail(f"implausible counts: {n_tensors} tensors, {n_kv} metadata keys for a {size}-byte file")
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.u("I"))
    align = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise r.fail(f"general.alignment {align!r} is not a power of two")
    infos = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = r.string()
        if name in names:
            raise r.fail(f"tensor {name!r} appears twice")
        names.add(name)
        n_dims = r.u("I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {name!r}: {n_dims} dimensions")
        ne = [r.u("q") for _ in range(n_dims)] + [1] * (MAX_DIMS - n_dims)
        tnum, offs = r.u("I"), r.u("Q")
        tname = GGUF_TYPE_NAMES.get(tnum)
        if tname is None:
            raise r.fail(f"tensor {name!r}: unknown type number {tnum}")
        t = TYPES[tname]
        if any(n <= 0 or n > 1 << 40 for n in ne) or ne[0] % t.blck_size:
            raise r.fail(f"tensor {name!r}: bad shape {ne} for {tname}")
        nb = contiguous_strides(t, tuple(ne))
        infos.append((name, t, tuple(ne), offs, nb[3] * ne[3]))
    data_offset = (r.pos + align - 1) // align * align
    tensors = []
    for name, t, ne, offs, nbytes in infos:
        if offs % align:
            raise GgcError(f"{path}: tensor {name!r}: offset {offs} is not aligned to {align}")
        start = data_offset + offs
        if start + nbytes > size:
            raise GgcError(f"{path}: tensor {name!r}: data [{start}, {start + nbytes}) runs past the end ({size})")
        tensors.append(GgufTensor(name, t, ne, start, nbytes))
    return GgufFile(path, version, meta, tensors, data_offset, buf)
