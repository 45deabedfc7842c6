"""Writer of each historical ggml_graph_export layout, so that the importer can be tested.

It writes what ggml of that era would have written for the same graph, from the field order
documented in legacy.py: parameters the era kept in a source tensor become that tensor (an
extra leaf), parameters the era hard-coded must have the era's value, and anything the layout
cannot hold is refused with a GgcError rather than silently dropped. Tensor flags other than
ggml's input/output/param/loss exist only in version 2 files; elsewhere they are not written.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import GgcError
from ..ir import ops as opt
from ..ir.graph import GGML_FLAGS, Graph, InlineData, Tensor
from ..ir.params import encode
from ..ir.types import TYPES, contiguous_strides, nbytes
from .legacy import LAYOUTS, MAGIC, PARAM_FLAG, STANDALONE_UNARY, Layout, layout_of, type_ids

__all__ = ["LAYOUTS", "LegacyWriteError", "export_ggml"]

MEM_ALIGN = 16  # GGML_MEM_ALIGN: size_eval summed padded sizes once ggml_nbytes_pad existed
V2_FLAGS = ("input", "output", "param", "loss")  # the ggml_tensor_flag values of 2024-09


class LegacyWriteError(GgcError):
    pass


@dataclass(eq=False)
class _Entry:
    """One record to write: a tensor of the graph, or a parameter leaf this era needed."""

    type_name: str
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    name: str = ""
    op_id: int = 0
    flags: int = 0
    words: list[int] = field(default_factory=lambda: [0] * opt.N_PARAM_WORDS)
    src: list[object | None] = field(default_factory=list)  # Tensor or _Entry
    data: bytes | None = None


def _fail(t: Tensor, lay: Layout, message: str) -> LegacyWriteError:
    return LegacyWriteError(f"{t.label()}: {message} (layout {lay.key})")


def _flag_bits(t: Tensor, lay: Layout) -> int:
    if not lay.has_flags:
        return 0
    return sum(GGML_FLAGS[f] for f in V2_FLAGS if f in t.flags)


def _inline(t: Tensor, lay: Layout) -> bytes:
    if not isinstance(t.data, InlineData):
        raise _fail(t, lay, "has no inline data; the legacy format embeds the data of every leaf")
    return t.data.data


def _base_entry(t: Tensor, lay: Layout) -> _Entry:
    if t.type.name not in type_ids(lay):
        raise _fail(t, lay, f"type {t.type.name} has no number in this era")
    if len(t.name.encode("utf-8")) >= lay.name_len:
        raise _fail(t, lay, f"name is longer than {lay.name_len - 1} bytes")
    return _Entry(t.type.name, t.ne, t.nb, t.name, flags=_flag_bits(t, lay))


def _enum_value(lay: Layout, t: Tensor) -> object:
    def value(kind: str, name: str) -> int:
        if kind == "unary" and name in lay.unary:
            return lay.unary.index(name)
        raise _fail(t, lay, f"{kind} op {name} has no number in this era")

    return value


def _param_leaf(t: Tensor, lay: Layout, words: list[int], spec: tuple[int, str, int]) -> _Entry:
    """The small constant tensor through which this era passed an op's parameters."""
    _, type_name, count = spec
    n_words = count * TYPES[type_name].type_size // 4
    if any(words[n_words:]):
        raise _fail(t, lay, f"{t.op} parameters beyond the {count} values this era passed cannot be written")
    ne = (count, 1, 1, 1)
    data = struct.pack(f"<{n_words}I", *words[:n_words])
    return _Entry(type_name, ne, contiguous_strides(TYPES[type_name], ne), data=data)  # type: ignore[arg-type]


def _era_op(t: Tensor, lay: Layout, params: dict) -> str:
    """The op as this era named it; GGML_OP_UNARY was separate ops before 2023-07."""
    if t.op == "UNARY" and "UNARY" not in lay.ops:
        name = str(params.pop("op", ""))
        if name not in STANDALONE_UNARY:
            raise _fail(t, lay, f"unary op {name!r} did not exist as an op of its own in this era")
        return name
    if t.op not in lay.ops:
        raise _fail(t, lay, f"op {t.op} did not exist in this era")
    return t.op


def _fit_words(t: Tensor, lay: Layout, words: list[int], src: list[object | None], extra: list[_Entry]) -> list[int]:
    """Place the op_params words where this era kept them; return the words left for op_params."""
    spec = lay.tensor_params.get(t.op)
    if spec is not None:
        carrier = _param_leaf(t, lay, words, spec)
        src.extend([None] * (spec[0] + 1 - len(src)))
        if src[spec[0]] is not None:
            raise _fail(t, lay, f"source {spec[0]} is taken, so the era's parameter tensor cannot go there")
        src[spec[0]] = carrier
        extra.append(carrier)
        return [0] * opt.N_PARAM_WORDS
    implicit = lay.implicit.get(t.op)
    if implicit is not None:
        wanted = [implicit.get(i, 0) for i in range(opt.N_PARAM_WORDS)]
        if words != wanted:
            raise _fail(t, lay, f"this era hard-coded the parameters of {t.op}; these differ")
        return [0] * opt.N_PARAM_WORDS
    if t.op == "PERMUTE" and not lay.op_params_len:
        return [0] * opt.N_PARAM_WORDS  # the importer recovers the axes from the strides
    if any(words[lay.op_params_len // 4 :]):
        raise _fail(t, lay, f"op params of {t.op} do not fit the {lay.op_params_len} bytes of this layout")
    return words


def _node_entry(t: Tensor, lay: Layout, extra: list[_Entry]) -> _Entry:
    e = _base_entry(t, lay)
    params = dict(t.params)
    e.op_id = lay.ops.index(_era_op(t, lay, params))
    words = encode(t.opdef, params, t.raw, _enum_value(lay, t))  # type: ignore[arg-type]
    e.src = list(t.src)
    e.words = _fit_words(t, lay, words, e.src, extra)
    if len(e.src) > lay.n_src:
        raise _fail(t, lay, f"has {len(e.src)} sources; this layout holds {lay.n_src}")
    if e.flags & PARAM_FLAG:
        e.data = _inline(t, lay)
    return e


def _leaf_entry(t: Tensor, lay: Layout) -> _Entry:
    e = _base_entry(t, lay)
    e.data = _inline(t, lay)
    return e


def _n_dims(ne: tuple[int, ...]) -> int:
    return next((j + 1 for j in range(3, 0, -1) if ne[j] > 1), 1)


def _source_index(e: _Entry, j: int, index: dict[int, int], lay: Layout) -> int:
    s = e.src[j] if j < len(e.src) else None
    if s is None:
        return -1
    if id(s) not in index:
        raise LegacyWriteError(f"{e.name!r}: source {j} is not an earlier tensor of the graph (layout {lay.key})")
    return index[id(s)]


def _record(e: _Entry, lay: Layout, index: dict[int, int], node: bool) -> bytes:
    out = [struct.pack("<II", type_ids(lay)[e.type_name], e.op_id)]
    if lay.has_n_dims:
        out.append(struct.pack("<I", _n_dims(e.ne)))
    if lay.has_flags:
        out.append(struct.pack("<i", e.flags))
    out.extend(struct.pack("<QQ", n, b) for n, b in zip(e.ne, e.nb))
    if lay.has_data_ptr:
        out.append(struct.pack("<Q", 0))  # the old address is meaningless on reload
    out.append(e.name.encode("utf-8").ljust(lay.name_len, b"\0"))
    n_words = lay.op_params_len // 4
    out.append(struct.pack(f"<{n_words}I", *e.words[:n_words]))
    if node:
        out.append(struct.pack(f"<{lay.n_src}i", *(_source_index(e, j, index, lay) for j in range(lay.n_src))))
    if e.data is not None:
        out.append(e.data)
    return b"".join(out)


def _size_eval(nodes: list[_Entry], lay: Layout) -> int:
    align = 1 if lay.has_n_dims else MEM_ALIGN
    sizes = (nbytes(TYPES[e.type_name], e.ne, e.nb) for e in nodes)
    return sum((s + align - 1) // align * align for s in sizes)


def export_ggml(graph: Graph, layout: str) -> bytes:
    """The bytes ggml_graph_export of the layout's era would have written for this graph."""
    lay = layout_of(layout)
    # v2 ggml put parameter tensors among the nodes (with their data); all other op-less ones are leafs
    as_node = [not t.is_leaf or (lay.has_flags and "param" in t.flags) for t in graph.tensors]
    extra: list[_Entry] = []
    leafs = [(t, _leaf_entry(t, lay)) for t, n in zip(graph.tensors, as_node) if not n]
    nodes = [(t, _node_entry(t, lay, extra)) for t, n in zip(graph.tensors, as_node) if n]
    all_leafs = [e for _, e in leafs] + extra
    index = {id(t): i for i, (t, _) in enumerate(leafs)}
    index.update({id(e): len(leafs) + i for i, e in enumerate(extra)})
    index.update({id(t): lay.node_index(k, len(all_leafs)) for k, (t, _) in enumerate(nodes)})
    head = struct.pack("<IIIIQ", MAGIC, lay.version, len(all_leafs), len(nodes), _size_eval([e for _, e in nodes], lay))
    body = [_record(e, lay, index, False) for e in all_leafs] + [_record(e, lay, index, True) for _, e in nodes]
    return head + b"".join(body)
