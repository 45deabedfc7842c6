"""ggml tensor types: name, block size, type size and, for quantized types, the block layout.

The table is static so that a .ggraph file can be read without ggml loaded; the capture layer
checks it against the installed library (`check_against_library`) by name, never by enum number.
"""

from __future__ import annotations

from dataclasses import dataclass

QK_K = 256


@dataclass(frozen=True)
class BlockField:
    """One field of a quantized block: name, element C type and element count."""

    name: str
    ctype: str  # f16, f32, u8, i8, u16, i16
    count: int

    @property
    def nbytes(self) -> int:
        return {"f16": 2, "f32": 4, "u8": 1, "i8": 1, "u16": 2, "i16": 2}[self.ctype] * self.count


@dataclass(frozen=True)
class GGMLType:
    name: str  # as ggml_type_name prints it: "f32", "q4_0", "q4_K"
    blck_size: int  # elements per block (1 for plain types)
    type_size: int  # bytes per block
    quantized: bool
    layout: tuple[BlockField, ...] = ()

    def row_size(self, ne0: int) -> int:
        """Bytes of one row of ne0 elements (ne0 must be a multiple of the block size)."""
        return self.type_size * (ne0 // self.blck_size)

    def __post_init__(self) -> None:
        if self.layout and sum(f.nbytes for f in self.layout) != self.type_size:
            raise AssertionError(f"block layout of {self.name} does not add up to {self.type_size}")


def _q(name: str, blck: int, *fields: tuple[str, str, int]) -> GGMLType:
    layout = tuple(BlockField(*f) for f in fields)
    return GGMLType(name, blck, sum(f.nbytes for f in layout), True, layout)


def _plain(name: str, size: int) -> GGMLType:
    return GGMLType(name, 1, size, False)


_K = QK_K
TYPES: dict[str, GGMLType] = {
    t.name: t
    for t in [
        _plain("f32", 4),
        _plain("f16", 2),
        _plain("bf16", 2),
        _plain("f64", 8),
        _plain("i8", 1),
        _plain("i16", 2),
        _plain("i32", 4),
        _plain("i64", 8),
        _q("q4_0", 32, ("d", "f16", 1), ("qs", "u8", 16)),
        _q("q4_1", 32, ("d", "f16", 1), ("m", "f16", 1), ("qs", "u8", 16)),
        _q("q5_0", 32, ("d", "f16", 1), ("qh", "u8", 4), ("qs", "u8", 16)),
        _q("q5_1", 32, ("d", "f16", 1), ("m", "f16", 1), ("qh", "u8", 4), ("qs", "u8", 16)),
        _q("q8_0", 32, ("d", "f16", 1), ("qs", "i8", 32)),
        _q("q8_1", 32, ("d", "f16", 1), ("s", "f16", 1), ("qs", "i8", 32)),
        _q("q1_0", 128, ("d", "f16", 1), ("qs", "u8", 16)),
        _q("q2_0", 64, ("d", "f16", 1), ("qs", "u8", 16)),
        _q("mxfp4", 32, ("e", "u8", 1), ("qs", "u8", 16)),
        _q("nvfp4", 64, ("d", "u8", 4), ("qs", "u8", 32)),
        _q("q2_K", _K, ("scales", "u8", _K // 16), ("qs", "u8", _K // 4), ("d", "f16", 1),
           ("dmin", "f16", 1)),
        _q("q3_K", _K, ("hmask", "u8", _K // 8), ("qs", "u8", _K // 4), ("scales", "u8", 12),
           ("d", "f16", 1)),
        _q("q4_K", _K, ("d", "f16", 1), ("dmin", "f16", 1), ("scales", "u8", 12),
           ("qs", "u8", _K // 2)),
        _q("q5_K", _K, ("d", "f16", 1), ("dmin", "f16", 1), ("scales", "u8", 12),
           ("qh", "u8", _K // 8), ("qs", "u8", _K // 2)),
        _q("q6_K", _K, ("ql", "u8", _K // 2), ("qh", "u8", _K // 4), ("scales", "i8", _K // 16),
           ("d", "f16", 1)),
        _q("q8_K", _K, ("d", "f32", 1), ("qs", "i8", _K), ("bsums", "i16", _K // 16)),
        _q("iq2_xxs", _K, ("d", "f16", 1), ("qs", "u16", _K // 8)),
        _q("iq2_xs", _K, ("d", "f16", 1), ("qs", "u16", _K // 8), ("scales", "u8", _K // 32)),
        _q("iq2_s", _K, ("d", "f16", 1), ("qs", "u8", _K // 4), ("qh", "u8", _K // 32),
           ("scales", "u8", _K // 32)),
        _q("iq3_xxs", _K, ("d", "f16", 1), ("qs", "u8", 3 * _K // 8)),
        _q("iq3_s", _K, ("d", "f16", 1), ("qs", "u8", _K // 4), ("qh", "u8", _K // 32),
           ("signs", "u8", _K // 8), ("scales", "u8", _K // 64)),
        _q("iq1_s", _K, ("d", "f16", 1), ("qs", "u8", _K // 8), ("qh", "u16", _K // 32)),
        _q("iq1_m", _K, ("qs", "u8", _K // 8), ("qh", "u8", _K // 16), ("scales", "u8", _K // 32)),
        _q("iq4_nl", 32, ("d", "f16", 1), ("qs", "u8", 16)),
        _q("iq4_xs", _K, ("d", "f16", 1), ("scales_h", "u16", 1), ("scales_l", "u8", _K // 64),
           ("qs", "u8", _K // 2)),
        _q("tq1_0", _K, ("qs", "u8", (_K - 4 * _K // 64) // 5), ("qh", "u8", _K // 64),
           ("d", "f16", 1)),
        _q("tq2_0", _K, ("qs", "u8", _K // 4), ("d", "f16", 1)),
    ]
}


def get_type(name: str) -> GGMLType:
    try:
        return TYPES[name]
    except KeyError:
        raise KeyError(f"unknown ggml type {name!r}") from None


def nbytes(t: GGMLType, ne: tuple[int, ...], nb: tuple[int, ...]) -> int:
    """Bytes spanned by a tensor with these sizes and strides (ggml_nbytes' rule)."""
    if any(n <= 0 for n in ne):
        return 0
    if t.blck_size == 1:
        size = t.type_size
        for n, b in zip(ne, nb):
            size += (n - 1) * b
        return size
    size = ne[0] * nb[0] // t.blck_size
    for n, b in zip(ne[1:], nb[1:]):
        size += (n - 1) * b
    return size


def contiguous_strides(t: GGMLType, ne: tuple[int, ...]) -> tuple[int, ...]:
    nb = [t.type_size, t.type_size * (ne[0] // t.blck_size)]
    for i in range(2, len(ne)):
        nb.append(nb[i - 1] * ne[i - 1])
    return tuple(nb)
