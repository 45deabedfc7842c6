"""Importer for the binary graphs of ggml's old ggml_graph_export (2023-2024, since removed).

The file has no self-description beyond a version number that was bumped once, so each
historical layout is a `Layout` table below and `detect_layout` tries them all. Field order
and sizes come from the export/import code of the commits cited with each layout; the code
here is written from those facts, not copied.

All layouts share: magic u32, version u32, n_leafs u32, n_nodes u32, size_eval u64; then the
leaf records, then the node records. A record is: type u32, op u32, [n_dims u32 | flags i32],
then ne[j], nb[j] interleaved as u64 pairs for j = 0..3, [data pointer u64], name[name_len],
[op_params], and for nodes n_src i32 source indices (-1 for none). Leafs are followed by their
ggml_nbytes bytes of data; in version 2 so are nodes flagged PARAM.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GgcError
from ..ir import ops as opt
from ..ir.graph import GGML_FLAGS, Graph, InlineData, Tensor, ValidationError, check_tensor
from ..ir.params import decode, word_from_f32
from ..ir.types import TYPES, contiguous_strides, nbytes

MAGIC = 0x67676D6C
HEADER_SIZE = 24
VERSIONS = (1, 2)
PARAM_FLAG = 4  # GGML_TENSOR_FLAG_PARAM: in version 2 such nodes carry their data
MAX_NE = 1 << 40  # sanity bound: a dimension larger than this is not a real tensor
MAX_NB = 1 << 50


class LegacyFormatError(GgcError):
    """A malformed or unsupported legacy graph file: names the file and the byte offset."""

    def __init__(self, file: str, offset: int, message: str, layout: str | None = None) -> None:
        self.file, self.offset, self.message, self.layout = file, offset, message, layout
        self.progress = 0  # records parsed before the failure: ranks layouts when none fits
        where = f" [layout {layout}]" if layout else ""
        super().__init__(f"{file}: byte {offset}: {message}{where}")


# ---------------------------------------------------------------- per-era enum tables

# ggml_type numbers. Append-only except for the integer types, which moved when the k-quants
# (2023-06) and i-quants (2024) were inserted before them. None marks ids ggc cannot represent.
_T_HEAD = ("f32", "f16", "q4_0", "q4_1", None, None, "q5_0", "q5_1", "q8_0", "q8_1",
           "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K")
# ggerganov/ggml src/ggml.c @00c40aa5 (GGML_TYPE_COUNT == 19); same in 2023-09 ggml.h.
TYPES_2023 = _T_HEAD + ("i8", "i16", "i32")
# JohannesGaessler/ggml include/ggml.h @002ad47e; 31..33 are the removed q4_0_4_4/4_8/8_8.
TYPES_2024 = _T_HEAD + ("iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s", "iq4_xs",
                        "i8", "i16", "i32", "i64", "f64", "iq1_m", "bf16", None, None, None, "tq1_0", "tq2_0")

# ggml_op numbers, by era. Names are ggml's own; many still match a modern op.
# ggerganov/ggml src/ggml.c @00c40aa5b0fe2e5af62ef17a538a3257110763f9, GGML_OP_NAME (64 ops).
OPS_2023_06 = (
    "NONE", "DUP", "ADD", "ADD1", "ACC", "SUB", "MUL", "DIV", "SQR", "SQRT", "LOG", "SUM", "SUM_ROWS",
    "MEAN", "REPEAT", "REPEAT_BACK", "ABS", "SGN", "NEG", "STEP", "RELU", "GELU", "GELU_QUICK", "SILU",
    "SILU_BACK", "NORM", "RMS_NORM", "RMS_NORM_BACK", "MUL_MAT", "OUT_PROD", "SCALE", "SET", "CPY", "CONT",
    "RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE", "GET_ROWS", "GET_ROWS_BACK", "DIAG", "DIAG_MASK_INF",
    "DIAG_MASK_ZERO", "SOFT_MAX", "SOFT_MAX_BACK", "ROPE", "ROPE_BACK", "ALIBI", "CLAMP", "CONV_1D_S1_PH",
    "CONV_1D_S2_PH", "CONV_2D_SK_P0", "FLASH_ATTN", "FLASH_FF", "FLASH_ATTN_BACK", "WIN_PART", "WIN_UNPART",
    "MAP_UNARY", "MAP_BINARY", "MAP_CUSTOM1", "MAP_CUSTOM2", "MAP_CUSTOM3", "CROSS_ENTROPY_LOSS",
    "CROSS_ENTROPY_LOSS_BACK",
)
_MAPS = ("MAP_UNARY", "MAP_BINARY", "MAP_CUSTOM1_F32", "MAP_CUSTOM2_F32", "MAP_CUSTOM3_F32",
         "MAP_CUSTOM1", "MAP_CUSTOM2", "MAP_CUSTOM3", "CROSS_ENTROPY_LOSS", "CROSS_ENTROPY_LOSS_BACK")
_HEAD_2023_09 = (
    "NONE", "DUP", "ADD", "ADD1", "ACC", "SUB", "MUL", "DIV", "SQR", "SQRT", "LOG", "SUM", "SUM_ROWS",
    "MEAN", "ARGMAX", "REPEAT", "REPEAT_BACK", "CONCAT", "SILU_BACK", "NORM", "RMS_NORM", "RMS_NORM_BACK",
    "GROUP_NORM", "MUL_MAT",
)
_VIEWS_ETC = ("SCALE", "SET", "CPY", "CONT", "RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE", "GET_ROWS",
              "GET_ROWS_BACK", "DIAG", "DIAG_MASK_INF", "DIAG_MASK_ZERO", "SOFT_MAX", "SOFT_MAX_BACK", "ROPE",
              "ROPE_BACK")
# Cebtenzzre/llama.cpp ggml.h @70488ef1b9b7c648eaa5306099425fd73093fdd5 (enum ggml_op).
OPS_2023_09 = _HEAD_2023_09 + ("OUT_PROD",) + _VIEWS_ETC + (
    "ALIBI", "CLAMP", "CONV_1D", "CONV_2D", "CONV_TRANSPOSE_2D", "POOL_1D", "POOL_2D", "UPSCALE",
    "FLASH_ATTN", "FLASH_FF", "FLASH_ATTN_BACK", "WIN_PART", "WIN_UNPART", "GET_REL_POS", "ADD_REL_POS",
    "UNARY",
) + _MAPS
# Abhishek8394/llama.cpp ggml/include/ggml.h @8421d445d3768c62ca7eff59656709b17ff28a75 (enum ggml_op).
OPS_2024_07 = _HEAD_2023_09 + ("MUL_MAT_ID", "OUT_PROD") + _VIEWS_ETC + (
    "CLAMP", "CONV_TRANSPOSE_1D", "IM2COL", "CONV_TRANSPOSE_2D", "POOL_1D", "POOL_2D", "UPSCALE", "PAD",
    "ARANGE", "TIMESTEP_EMBEDDING", "ARGSORT", "LEAKY_RELU", "FLASH_ATTN_EXT", "FLASH_ATTN_BACK", "SSM_CONV",
    "SSM_SCAN", "WIN_PART", "WIN_UNPART", "GET_REL_POS", "ADD_REL_POS", "UNARY",
) + _MAPS
# JohannesGaessler/ggml include/ggml.h @002ad47e352a5c7769d7e2b78aadd985b7e6d8ca (enum ggml_op).
OPS_2024_09 = (
    "NONE", "DUP", "ADD", "ADD1", "ACC", "SUB", "MUL", "DIV", "SQR", "SQRT", "LOG", "SIN", "COS", "SUM",
    "SUM_ROWS", "MEAN", "ARGMAX", "REPEAT", "REPEAT_BACK", "CONCAT", "SILU_BACK", "NORM", "RMS_NORM",
    "RMS_NORM_BACK", "GROUP_NORM", "MUL_MAT", "MUL_MAT_ID", "OUT_PROD",
) + _VIEWS_ETC + (
    "CLAMP", "CONV_TRANSPOSE_1D", "IM2COL", "IM2COL_BACK", "CONV_TRANSPOSE_2D", "POOL_1D", "POOL_2D",
    "POOL_2D_BACK", "UPSCALE", "PAD", "ARANGE", "TIMESTEP_EMBEDDING", "ARGSORT", "LEAKY_RELU", "FLASH_ATTN_EXT",
    "FLASH_ATTN_BACK", "SSM_CONV", "SSM_SCAN", "WIN_PART", "WIN_UNPART", "GET_REL_POS", "ADD_REL_POS",
    "RWKV_WKV", "UNARY",
) + _MAPS + ("ACCURACY_COUNT", "OPT_STEP_ADAMW")

# ggml_unary_op numbers (op_params word 0 of GGML_OP_UNARY), from the same headers.
UNARY_2023_09 = ("ABS", "SGN", "NEG", "STEP", "TANH", "ELU", "RELU", "GELU", "GELU_QUICK", "SILU")
UNARY_2024_07 = ("ABS", "SGN", "NEG", "STEP", "TANH", "ELU", "RELU", "SIGMOID", "GELU", "GELU_QUICK", "SILU",
                 "HARDSWISH", "HARDSIGMOID")
UNARY_2024_09 = UNARY_2024_07 + ("EXP",)
# Before GGML_OP_UNARY existed (2023-07) these were ops of their own.
STANDALONE_UNARY = ("ABS", "SGN", "NEG", "STEP", "TANH", "ELU", "RELU", "GELU", "GELU_QUICK", "SILU")

# Where an era kept an op's parameters in an extra 1-d source tensor instead of op_params:
# op -> (source slot, ggml type of that tensor, number of elements). The tensor's bytes are
# exactly the modern op_params words (VIEW: size_t offset; CLAMP: min, max; ...).
TENSOR_PARAMS_2023_06 = {
    "VIEW": (2, "i32", 2),  # opt[0] = i32[2] holding the byte offset (import read args[2]->data)
    "DIAG_MASK_INF": (1, "i32", 1),
    "DIAG_MASK_ZERO": (1, "i32", 1),
    "CLAMP": (1, "f32", 2),
    "SCALE": (1, "f32", 1),
    "ROPE": (1, "i32", 4),  # n_past, n_dims, mode, n_ctx: the same words as modern op_params 0..3
}
SCALE_TENSOR = {"SCALE": (1, "f32", 1)}  # ggml_scale took a tensor until late 2023


def _f32(x: float) -> int:
    return word_from_f32(x)


@dataclass(frozen=True)
class Layout:
    """One historical on-disk layout of ggml_graph_export, and the enums of its era."""

    key: str
    era: str
    version: int
    name_len: int  # GGML_MAX_NAME
    op_params_len: int  # GGML_MAX_OP_PARAMS in bytes; 0 = not written
    n_src: int  # source indices per node
    has_n_dims: bool
    has_flags: bool  # version 2: i32 flags after op; PARAM nodes carry data
    has_data_ptr: bool  # u64 copy of tensor->data after ne/nb
    node_base: int | None  # node sources written as node_base + k (GGML_MAX_NODES); None: n_leafs + k
    ops: tuple[str, ...]
    unary: tuple[str, ...]  # ggml_unary_op table; empty where UNARY did not exist
    types: tuple[str | None, ...]
    # op -> (slot, type, count) of a source tensor that carried the op's parameters
    tensor_params: dict[str, tuple[int, str, int]] = field(default_factory=dict, compare=False)
    # op -> op_params words the era's kernel assumed but did not store (file has zeros there)
    implicit: dict[str, dict[int, int]] = field(default_factory=dict, compare=False)

    def fixed_size(self, node: bool) -> int:
        """Bytes of a record before its data (leaf) or up to its end (node without data)."""
        size = 8 + (4 if self.has_n_dims else 0) + (4 if self.has_flags else 0) + 64
        size += (8 if self.has_data_ptr else 0) + self.name_len + self.op_params_len
        return size + (4 * self.n_src if node else 0)

    def node_index(self, k: int, n_leafs: int) -> int:
        return (self.node_base if self.node_base is not None else n_leafs) + k


# 2023-05 .. 2023-07: ggml PR #108 (export added) until ggml PR #409 added op_params to the file.
# Field order: ggerganov/ggml src/ggml.c @00c40aa5 (export writes type, op, n_dims, ne/nb, data
# pointer, name; nodes then src0, src1, opt[0..3]; node sources as GGML_MAX_NODES + k).
# GGML_MAX_NODES 4096 and name[32]: ggerganov/ggml include/ggml/ggml.h @018d9737 (an earlier header;
# the name length at @00c40aa5 itself was not seen). The op enum is @00c40aa5's: files from before
# REPEAT_BACK/GELU_QUICK/OUT_PROD were inserted (2023-05) number their later ops differently.
V1_2023_06 = Layout(
    "v1-name32-noparams-src6-ndims-ptr", "ggml 2023-05..2023-07", 1, 32, 0, 6, True, False, True, 4096,
    OPS_2023_06, (), TYPES_2023, TENSOR_PARAMS_2023_06,
    {"SOFT_MAX": {0: _f32(1.0)}, "RMS_NORM": {0: _f32(1e-6)}, "NORM": {0: _f32(1e-5)}},
)
# 2023-07 .. 2023-11: op_params (32 bytes) written after the name, the data pointer dropped,
# src[GGML_MAX_SRC = 6]. Cebtenzzre/llama.cpp ggml.c @0fdd4b721bb219b3ef5ddae55154c75f545c1476
# (export/import) and ggml.h @70488ef1 (GGML_MAX_NAME 64, GGML_MAX_OP_PARAMS 32, GGML_MAX_NODES 4096).
V1_2023_09 = Layout(
    "v1-name64-params32-src6-ndims", "llama.cpp/ggml 2023-09", 1, 64, 32, 6, True, False, False, 4096,
    OPS_2023_09, UNARY_2023_09, TYPES_2023, SCALE_TENSOR,
    {"SOFT_MAX": {0: _f32(1.0)}, "CONCAT": {0: 2}},
)
# 2024-01 .. 2024-09: n_dims gone, op_params 64 bytes, src[10], node sources n_leafs + k.
# Abhishek8394/llama.cpp ggml/src/ggml.c and ggml/include/ggml.h @8421d445 (also seen unchanged
# in PabloGSJ/llama.cpp_TFG2024 ggml.c @024557ba and CodeLinaro/llama.cpp ggml/src/ggml.c @07e4d0a5).
V1_2024_07 = Layout(
    "v1-name64-params64-src10", "llama.cpp/ggml 2024-01..2024-09", 1, 64, 64, 10, False, False, False, None,
    OPS_2024_07, UNARY_2024_07, TYPES_2024[:34],
)
# 2024-09 .. 2024-11 (ggml PR #908, MNIST training): GGML_FILE_VERSION 2, i32 flags after op,
# and nodes flagged PARAM followed by their data. JohannesGaessler/ggml src/ggml.c and
# include/ggml.h @002ad47e352a5c7769d7e2b78aadd985b7e6d8ca. Removed soon after (ggml 9d0762e).
V2_2024_09 = Layout(
    "v2-name64-params64-src10-flags", "ggml 2024-09..2024-11", 2, 64, 64, 10, False, True, False, None,
    OPS_2024_09, UNARY_2024_09, TYPES_2024,
)

LAYOUTS: dict[str, Layout] = {lay.key: lay for lay in (V1_2023_06, V1_2023_09, V1_2024_07, V2_2024_09)}


# ---------------------------------------------------------------- raw records


@dataclass
class Record:
    offset: int  # byte offset of the record in the file
    is_node: bool
    type_name: str
    op_name: str  # the era's name
    flags: int
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    name: str
    words: list[int]  # op_params as u32 words, padded to 16
    src: list[int | None]  # global indices: leafs first, then nodes
    data: bytes | None


class _Reader:
    def __init__(self, data: bytes, file: str, layout: str | None) -> None:
        self.data, self.file, self.layout, self.pos = memoryview(data), file, layout, 0

    def fail(self, message: str, offset: int | None = None) -> LegacyFormatError:
        return LegacyFormatError(self.file, self.pos if offset is None else offset, message, self.layout)

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            left = len(self.data) - self.pos
            raise self.fail(f"file ends inside {what} (needs {n} bytes, {left} left; truncated?)")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")

    def i32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little", signed=True)

    def u64(self, what: str) -> int:
        return int.from_bytes(self.take(8, what), "little")


@dataclass
class _Header:
    version: int
    n_leafs: int
    n_nodes: int
    size_eval: int


def _read_header(r: _Reader) -> _Header:
    magic = r.u32("the magic number")
    if magic != MAGIC:
        raise r.fail(f"bad magic 0x{magic:08x}: not a ggml_graph_export file (expected 0x{MAGIC:08x}, 'ggml')", 0)
    version = r.u32("the version")
    if version not in VERSIONS:
        raise r.fail(f"unsupported version {version} (known: {', '.join(map(str, VERSIONS))})", 4)
    return _Header(version, r.u32("the leaf count"), r.u32("the node count"), r.u64("size_eval"))


def _read_type(r: _Reader, lay: Layout) -> str:
    at = r.pos
    tid = r.u32("the tensor type")
    name = lay.types[tid] if tid < len(lay.types) else None
    if name is None or name not in TYPES:
        raise r.fail(f"unknown or unsupported tensor type id {tid}", at)
    return name


def _read_op(r: _Reader, lay: Layout, is_node: bool) -> str:
    at = r.pos
    op = r.u32("the op")
    if op >= len(lay.ops):
        raise r.fail(f"unknown op number {op} (this era has {len(lay.ops)} ops)", at)
    if not is_node and op != 0:
        raise r.fail(f"leaf has op {lay.ops[op]}; leafs must be NONE", at)
    return lay.ops[op]


def _read_shape(r: _Reader, type_name: str, is_node: bool) -> tuple[tuple[int, int, int, int], ...]:
    start = r.pos
    ne: list[int] = []
    nb: list[int] = []
    for j in range(4):
        at = r.pos
        ne.append(r.u64(f"ne[{j}]"))
        nb.append(r.u64(f"nb[{j}]"))
        if ne[-1] > MAX_NE or not 0 < nb[-1] <= MAX_NB:
            raise r.fail(f"implausible size ne[{j}]={ne[-1]} / stride nb[{j}]={nb[-1]}", at)
    shape = (ne[0], ne[1], ne[2], ne[3]), (nb[0], nb[1], nb[2], nb[3])
    if ne[0] * ne[1] * ne[2] * ne[3] > MAX_NE:
        raise r.fail(f"implausible element count for ne={ne}", start)
    # ggml created every leaf with ggml_new_tensor, so leaf strides are always the contiguous ones
    if not is_node and shape[1] != contiguous_strides(TYPES[type_name], shape[0]):
        raise r.fail(f"leaf strides nb={nb} are not contiguous for ne={ne}", start)
    return shape


def _read_name(r: _Reader, lay: Layout) -> str:
    at = r.pos
    raw = r.take(lay.name_len, "the name")
    end = raw.find(b"\0")
    if end < 0:
        raise r.fail(f"name field of {lay.name_len} bytes has no terminating NUL", at)
    return raw[:end].decode("utf-8", errors="replace")


def _read_words(r: _Reader, lay: Layout) -> list[int]:
    raw = r.take(lay.op_params_len, "op_params")
    words = list(struct.unpack(f"<{len(raw) // 4}I", raw))
    return words + [0] * (opt.N_PARAM_WORDS - len(words))


def _read_sources(r: _Reader, lay: Layout, k: int, h: _Header) -> list[int | None]:
    """Source indices of node k, as global indices (leafs 0..n_leafs-1, then nodes)."""
    out: list[int | None] = []
    for j in range(lay.n_src):
        at = r.pos
        idx = r.i32(f"source index {j}")
        if idx == -1:
            out.append(None)
        elif 0 <= idx < h.n_leafs and (lay.node_base is None or idx < lay.node_base):
            out.append(idx)
        elif lay.node_index(0, h.n_leafs) <= idx < lay.node_index(k, h.n_leafs):
            out.append(h.n_leafs + idx - lay.node_index(0, h.n_leafs))
        elif lay.node_index(k, h.n_leafs) <= idx < lay.node_index(h.n_nodes, h.n_leafs):
            raise r.fail(f"source {j} of node {k} is node {idx - lay.node_index(0, h.n_leafs)}, not an earlier one", at)
        else:
            raise r.fail(f"source {j} index {idx} is out of range ({h.n_leafs} leafs, {h.n_nodes} nodes)", at)
    return out


def _read_record(r: _Reader, lay: Layout, h: _Header, k: int, is_node: bool) -> Record:
    start = r.pos
    type_name = _read_type(r, lay)
    op_name = _read_op(r, lay, is_node)
    flags = 0
    if lay.has_n_dims:
        at = r.pos
        n_dims = r.u32("n_dims")
        if not 1 <= n_dims <= 4:
            raise r.fail(f"n_dims {n_dims} is not 1..4", at)
    if lay.has_flags:
        at = r.pos
        flags = r.i32("flags")
        if flags & ~0xF:
            raise r.fail(f"unknown tensor flag bits 0x{flags:x}", at)
    ne, nb = _read_shape(r, type_name, is_node)  # type: ignore[misc]
    if lay.has_data_ptr:
        r.u64("the data pointer")
    name = _read_name(r, lay)
    at = r.pos
    words = _read_words(r, lay)
    if not is_node and any(words):
        raise r.fail("leaf has non-zero op_params (ggml never set them on leafs)", at)
    src = _read_sources(r, lay, k, h) if is_node else []
    data = None
    if not is_node or flags & PARAM_FLAG:
        data = r.take(nbytes(TYPES[type_name], ne, nb), f"the data of {name or 'a tensor'!r}")
    return Record(start, is_node, type_name, op_name, flags, ne, nb, name, words, src, data)


def read_records(data: bytes, lay: Layout, file: str = "<bytes>") -> tuple[_Header, list[Record]]:
    """Parse the whole file in one layout; raise LegacyFormatError where it stops fitting."""
    r = _Reader(data, file, lay.key)
    h = _read_header(r)
    if h.version != lay.version:
        raise r.fail(f"version {h.version} is not this layout's {lay.version}", 4)
    records: list[Record] = []
    try:
        for i in range(h.n_leafs + h.n_nodes):
            is_node = i >= h.n_leafs
            records.append(_read_record(r, lay, h, i - h.n_leafs if is_node else i, is_node))
    except LegacyFormatError as e:
        e.progress = len(records)
        raise
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} bytes left over after the last record")
    return h, records


# ---------------------------------------------------------------- detection


def _detect(data: bytes, file: str) -> Layout:
    _read_header(_Reader(data, file, None))  # magic and version errors are the same for every layout
    fits: list[Layout] = []
    failures: list[LegacyFormatError] = []
    for lay in LAYOUTS.values():
        try:
            read_records(data, lay, file)
        except LegacyFormatError as e:
            failures.append(e)
            continue
        fits.append(lay)
    if len(fits) == 1:
        return fits[0]
    if fits:
        names = ", ".join(lay.key for lay in fits)
        raise LegacyFormatError(file, 0, f"ambiguous: the file fits several layouts ({names})")
    best = max(failures, key=lambda e: (e.progress, e.offset))
    message = f"fits no known ggml_graph_export layout; the closest stops here: {best.message}"
    raise LegacyFormatError(file, best.offset, message, best.layout)


def detect_layout(data: bytes) -> Layout:
    """The one layout whose records parse exactly to the end of the file with sane values."""
    return _detect(data, "<bytes>")


# ---------------------------------------------------------------- records -> IR


def _words_from_bytes(raw: bytes) -> dict[int, int]:
    return {i: int.from_bytes(raw[4 * i : 4 * i + 4], "little") for i in range(len(raw) // 4)}


def _permute_axes(src: Record, rec: Record) -> dict[int, int]:
    """Recover ggml_permute's axes from strides: source dim i went to result dim axes[i]."""
    used: set[int] = set()
    axes: dict[int, int] = {}
    for i in range(4):
        j = next((j for j in range(4) if j not in used and (rec.ne[j], rec.nb[j]) == (src.ne[i], src.nb[i])), None)
        if j is None:
            return {}
        used.add(j)
        axes[i] = j
    return axes


class _Builder:
    """Turns one layout's records into IR tensors, mapping each era's ops onto modern ones."""

    def __init__(self, lay: Layout, h: _Header, records: list[Record], file: str) -> None:
        self.lay, self.h, self.records, self.file = lay, h, records, file
        self.folded: set[int] = set()  # leafs whose only role was to carry op parameters

    def fail(self, rec: Record, message: str) -> LegacyFormatError:
        what = f"{'node' if rec.is_node else 'leaf'} {rec.name!r}" if rec.name else "record"
        return LegacyFormatError(self.file, rec.offset, f"{what}: {message}", self.lay.key)

    def modern_op(self, rec: Record) -> tuple[str, str | None]:
        """(modern op, unary op name for ops that became GGML_OP_UNARY)."""
        if rec.op_name in STANDALONE_UNARY and not self.lay.unary:
            return "UNARY", rec.op_name
        if not opt.is_known(rec.op_name):
            raise self.fail(rec, f"op {rec.op_name} of this era has no modern ggml equivalent")
        return rec.op_name, None

    def fold_tensor_param(self, rec: Record, op: str) -> None:
        """Move parameters an era kept in a source tensor into op_params words."""
        spec = self.lay.tensor_params.get(op)
        if spec is None or len(rec.src) <= spec[0] or rec.src[spec[0]] is None:
            return
        slot = spec[0]
        carrier = self.records[rec.src[slot]]  # type: ignore[index]
        if carrier.is_node or carrier.data is None or len(carrier.data) > 4 * opt.N_PARAM_WORDS:
            raise self.fail(rec, f"{op} parameter source {slot} is not a small constant leaf")
        for i, w in _words_from_bytes(carrier.data).items():
            rec.words[i] = w
        self.folded.add(rec.src[slot])  # type: ignore[arg-type]
        rec.src[slot] = None

    def convert(self, rec: Record) -> tuple[str, str | None]:
        op, unary = self.modern_op(rec)
        self.fold_tensor_param(rec, op)
        if op == "ROPE" and sum(s is not None for s in rec.src) < 2:
            raise self.fail(rec, "ROPE without a positions tensor (before 2023-10 it took n_past) has no modern form")
        implicit = self.lay.implicit.get(op)
        if implicit and not any(rec.words):
            for i, w in implicit.items():
                rec.words[i] = w
        if op == "PERMUTE" and not self.lay.op_params_len and rec.src and rec.src[0] is not None:
            for i, j in _permute_axes(self.records[rec.src[0]], rec).items():
                rec.words[i] = j
        return op, unary

    def enum_name(self, kind: str, value: int) -> str | None:
        if kind == "unary" and 0 <= value < len(self.lay.unary):
            return self.lay.unary[value]
        return None

    def build(self) -> Graph:
        converted = {i: self.convert(rec) for i, rec in enumerate(self.records) if rec.is_node}
        still_used = {s for rec in self.records for s in rec.src if s is not None}
        keep = [i for i in range(len(self.records)) if i not in self.folded or i in still_used]
        tensors: dict[int, Tensor] = {}
        for new_id, i in enumerate(keep):
            rec = self.records[i]
            tensors[i] = self.tensor(new_id, rec, converted.get(i, ("NONE", None)), tensors)
        meta: dict[str, int | str] = {"legacy_layout": self.lay.key, "legacy_size_eval": self.h.size_eval}
        graph = Graph(list(tensors.values()), meta)
        try:
            graph.validate()
        except ValidationError as e:
            raise LegacyFormatError(self.file, 0, f"the imported graph is not valid: {e}", self.lay.key) from None
        return graph

    def tensor(self, tid: int, rec: Record, conv: tuple[str, str | None], done: dict[int, Tensor]) -> Tensor:
        op, unary = conv
        src: list[Tensor | None] = [None if s is None else done[s] for s in rec.src]
        while src and src[-1] is None:
            src.pop()
        params, raw = decode(opt.lookup(op), rec.words, self.enum_name)
        if unary is not None:
            params, raw = {"op": unary}, {}
        t = Tensor(
            id=tid, type=TYPES[rec.type_name], ne=rec.ne, nb=rec.nb, op=op, params=params, raw=raw, src=src,
            flags=frozenset(f for f, bit in GGML_FLAGS.items() if rec.flags & bit), name=rec.name,
            data=None if rec.data is None else InlineData(rec.data),
        )
        self.set_view(t, rec)
        try:
            check_tensor(t)
        except ValidationError as e:
            raise self.fail(rec, str(e)) from None
        return t

    def set_view(self, t: Tensor, rec: Record) -> None:
        """Modern ggml's rule: a view points at the root of its parent, offsets add up."""
        if not t.opdef.view:
            return
        slot = 1 if t.op == "CPY" else 0
        parent = t.src[slot] if len(t.src) > slot else None
        if parent is None:
            raise self.fail(rec, f"{t.op} has no source {slot} to be a view of")
        offset = rec.words[0] | rec.words[1] << 32 if t.op == "VIEW" else 0
        t.view_src = parent.view_src or parent
        t.view_offs = parent.view_offs + offset


# ---------------------------------------------------------------- entry points


def import_bytes(data: bytes, file: str = "<bytes>") -> Graph:
    lay = _detect(data, file)
    h, records = read_records(data, lay, file)
    return _Builder(lay, h, records, file).build()


def import_ggml(path: str | Path) -> Graph:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LegacyFormatError(str(path), 0, f"cannot read: {e.strerror}") from None
    return import_bytes(data, str(path))


def type_ids(lay: Layout) -> dict[str, int]:
    return {name: i for i, name in enumerate(lay.types) if name is not None}


def layout_of(key: str) -> Layout:
    try:
        return LAYOUTS[key]
    except KeyError:
        raise GgcError(f"unknown legacy layout {key!r} (known: {', '.join(LAYOUTS)})") from None

