"""Decode and encode op_params words through the op table.

Decoded values are kept only where they differ from zero (a missing field means a zero word);
enum-valued params (unary, glu) are kept by name and always. Words the table does not decode,
or that would not survive a round trip as text (a NaN with a payload), stay raw.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping

from .graph import ParamValue
from .ops import N_PARAM_WORDS, OpDef


def f32_from_word(w: int) -> float:
    return struct.unpack("<f", struct.pack("<I", w & 0xFFFFFFFF))[0]


def word_from_f32(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def i32_from_word(w: int) -> int:
    w &= 0xFFFFFFFF
    return w - (1 << 32) if w & 0x80000000 else w


CANONICAL_NAN = 0x7FC00000


def decode(
    d: OpDef, words: list[int], enum_name: Callable[[str, int], str | None]
) -> tuple[dict[str, ParamValue], dict[int, int]]:
    """words: 16 u32 op_params words. enum_name(kind, value) names a unary/glu op or None."""
    params: dict[str, ParamValue] = {}
    raw: dict[int, int] = {}
    covered = set()
    for p in d.params:
        w = words[p.word] & 0xFFFFFFFF
        covered.add(p.word)
        if p.kind == "f32":
            x = f32_from_word(w)
            if math.isnan(x) and w != CANONICAL_NAN:
                raw[p.word] = w
            elif w:
                params[p.name] = x
        elif p.kind in ("unary", "glu"):
            name = enum_name(p.kind, i32_from_word(w))
            if name is None:
                raw[p.word] = w
            else:
                params[p.name] = name
        elif w:
            params[p.name] = i32_from_word(w)
    for i in range(N_PARAM_WORDS):
        if i not in covered and words[i] & 0xFFFFFFFF:
            raw[i] = words[i] & 0xFFFFFFFF
    return params, raw


def encode(
    d: OpDef,
    params: Mapping[str, ParamValue],
    raw: Mapping[int, int],
    enum_value: Callable[[str, str], int],
) -> list[int]:
    """The 16 op_params words; enum_value(kind, name) maps a unary/glu name to the library's number."""
    words = [0] * N_PARAM_WORDS
    for name, v in params.items():
        p = d.param(name)
        if p is None:
            raise KeyError(f"{d.name} has no parameter {name!r}")
        if p.kind == "f32":
            words[p.word] = word_from_f32(float(v))
        elif p.kind in ("unary", "glu"):
            words[p.word] = enum_value(p.kind, str(v)) & 0xFFFFFFFF
        else:
            words[p.word] = int(v) & 0xFFFFFFFF
    for i, w in raw.items():
        words[i] = w & 0xFFFFFFFF
    return words
