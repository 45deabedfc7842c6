"""Tensors and graphs of the IR, with validation.

A Graph is a list of tensors in topological order. Tensors whose op is NONE are ggml's leafs;
the others are ggml's nodes, in execution order. Views keep their parent and byte offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import GgcError
from . import ops as opt
from .types import GGMLType, contiguous_strides, nbytes

# ggml's own tensor flags, by bit, and the roles that ggc adds on top of them.
GGML_FLAGS = {"input": 1, "output": 2, "param": 4, "loss": 8, "compute": 16}
ROLE_FLAGS = ("weight", "state")
ALL_FLAGS = tuple(GGML_FLAGS) + ROLE_FLAGS

ParamValue = int | float | str


@dataclass(frozen=True)
class GgufData:
    """Data comes from the GGUF tensor of this name; with split=D, from this rank's equal share of
    it along dimension D (rank r of the graph's meta `ranks` holds [r*ne[D], (r+1)*ne[D]))."""

    name: str
    split: int | None = None


@dataclass(frozen=True)
class InlineData:
    """Small constant bytes carried in the graph itself."""

    data: bytes


DataBinding = GgufData | InlineData | None


@dataclass(eq=False, repr=False)
class Tensor:
    id: int
    type: GGMLType
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    op: str = "NONE"
    params: dict[str, ParamValue] = field(default_factory=dict)  # decoded op_params
    raw: dict[int, int] = field(default_factory=dict)  # op_params words not decoded: index -> u32
    src: list[Tensor | None] = field(default_factory=list)  # trailing None trimmed
    view_src: Tensor | None = None
    view_offs: int = 0
    flags: frozenset[str] = frozenset()
    name: str = ""
    data: DataBinding = None

    @property
    def is_leaf(self) -> bool:
        return self.op == "NONE"

    @property
    def opdef(self) -> opt.OpDef:
        return opt.lookup(self.op)

    @property
    def nbytes(self) -> int:
        return nbytes(self.type, self.ne, self.nb)

    @property
    def nelements(self) -> int:
        n = 1
        for x in self.ne:
            n *= x
        return n

    def is_contiguous(self) -> bool:
        return self.nb == contiguous_strides(self.type, self.ne)

    def op_label(self) -> str:
        """The op, with the function of a UNARY or GLU: "MUL_MAT", "GLU SWIGLU"."""
        return f"{self.op} {self.params.get('op')}" if self.op in ("UNARY", "GLU") else self.op

    def label(self) -> str:
        return f"%{self.id} {self.name!r}" if self.name else f"%{self.id}"

    def __repr__(self) -> str:
        # not the dataclass repr: that recurses through sources, exponentially on a DAG
        return f"<Tensor {self.label()} {self.op} {self.type.name} {list(self.ne)}>"


class ValidationError(GgcError):
    pass


@dataclass(eq=False, repr=False)
class Graph:
    tensors: list[Tensor] = field(default_factory=list)
    meta: dict[str, int | str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Graph {len(self.tensors)} tensors, {len(self.nodes)} nodes, meta={self.meta}>"

    @property
    def nodes(self) -> list[Tensor]:
        return [t for t in self.tensors if not t.is_leaf]

    @property
    def leafs(self) -> list[Tensor]:
        return [t for t in self.tensors if t.is_leaf]

    def split_weights(self) -> dict[str, int]:
        """A partitioned graph's weights split across ranks: GGUF name -> the dimension split."""
        return {t.data.name: t.data.split for t in self.leafs
                if isinstance(t.data, GgufData) and t.data.split is not None}

    def by_name(self, name: str) -> Tensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    def outputs(self) -> list[Tensor]:
        """Tensors flagged output; failing that, the last node (ggml's convention)."""
        outs = [t for t in self.tensors if "output" in t.flags]
        if not outs and self.nodes:
            outs = [self.nodes[-1]]
        return outs

    def consumers(self) -> dict[int, list[Tensor]]:
        users: dict[int, list[Tensor]] = {t.id: [] for t in self.tensors}
        for t in self.tensors:
            for s in t.src:
                if s is not None:
                    users[s.id].append(t)
        return users

    def validate(self) -> None:
        """Check ids, topological order, sources, shapes, strides and view bounds."""
        seen: set[int] = set()
        for i, t in enumerate(self.tensors):
            where = t.label()
            if t.id != i:
                raise ValidationError(f"{where}: id {t.id} out of sequence (expected %{i})")
            for j, s in enumerate(t.src):
                if s is not None and s.id not in seen:
                    raise ValidationError(f"{where}: source {j} (%{s.id}) is not defined before it")
            if t.view_src is not None and t.view_src.id not in seen:
                raise ValidationError(f"{where}: view parent %{t.view_src.id} is not defined before it")
            check_tensor(t)
            seen.add(t.id)


def check_tensor(t: Tensor) -> None:
    """Validate one tensor against its sources and its op's rules; raise ValidationError."""
    where = t.label()
    if len(t.ne) != opt.MAX_DIMS or len(t.nb) != opt.MAX_DIMS:
        raise ValidationError(f"{where}: ne and nb need {opt.MAX_DIMS} entries each")
    if any(n < 0 for n in t.ne):
        raise ValidationError(f"{where}: negative size in ne={list(t.ne)}")
    if t.ne[0] % t.type.blck_size:
        raise ValidationError(
            f"{where}: ne0={t.ne[0]} is not a multiple of the {t.type.name} block size {t.type.blck_size}"
        )
    if t.nb[0] != t.type.type_size and t.view_src is None:
        raise ValidationError(f"{where}: nb0={t.nb[0]} must equal the {t.type.name} type size {t.type.type_size}")
    if any(b <= 0 for b in t.nb):
        raise ValidationError(f"{where}: strides must be positive, got nb={list(t.nb)}")
    unknown = set(t.flags) - set(ALL_FLAGS)
    if unknown:
        raise ValidationError(f"{where}: unknown flags {sorted(unknown)}")
    d = t.opdef
    n_src = len(t.src)
    lo, hi = d.n_src
    if not lo <= n_src <= hi:
        raise ValidationError(f"{where}: {t.op} takes {lo}..{hi} sources, got {n_src}")
    for j in range(lo):
        if t.src[j] is None:
            raise ValidationError(f"{where}: {t.op} needs source {j}")
    if t.is_leaf and t.view_src is None and not t.is_contiguous():
        raise ValidationError(f"{where}: leaf strides nb={list(t.nb)} are not contiguous for ne={list(t.ne)}")
    if not t.is_leaf and not d.view and t.view_src is None and not t.is_contiguous():
        raise ValidationError(f"{where}: {t.op} result strides nb={list(t.nb)} are not contiguous")
    if d.view and t.view_src is None:
        raise ValidationError(f"{where}: {t.op} is a view op but has no view parent")
    if t.view_src is not None:
        parent = t.view_src
        if t.view_offs < 0 or t.view_offs + t.nbytes > parent.nbytes:
            raise ValidationError(
                f"{where}: view [{t.view_offs}, {t.view_offs + t.nbytes}) is outside its parent "
                f"%{parent.id} of {parent.nbytes} bytes"
            )
    if d.shape is not None and all(s is not None for s in t.src[:lo]) and lo > 0:
        try:
            want = d.shape([s.ne for s in t.src if s is not None])
        except IndexError:
            want = None
        if want is not None and tuple(want) != t.ne:
            raise ValidationError(f"{where}: {t.op} of these sources has ne={list(want)}, not {list(t.ne)}")
    if isinstance(t.data, InlineData) and len(t.data.data) != t.nbytes:
        raise ValidationError(f"{where}: inline data has {len(t.data.data)} bytes, the tensor {t.nbytes}")
    for name in t.params:
        if d.param(name) is None:
            raise ValidationError(f"{where}: {t.op} has no parameter {name!r}")
    decoded = {d.param(n).word for n in t.params}  # type: ignore[union-attr]
    for w in t.raw:
        if not 0 <= w < opt.N_PARAM_WORDS or w in decoded:
            raise ValidationError(f"{where}: raw op_params word {w} is out of range or also decoded")
