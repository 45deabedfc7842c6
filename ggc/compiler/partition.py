"""Tensor-parallel partition: the graph that each of R ranks runs, derived from the captured graph.

Every rank runs the same local graph (SPMD); ranks differ only in the slice of each split weight
they load (GgufData.split: rank r holds the r-th of R equal parts along one dimension).

Which tensors split is derived from the graph by propagation, not from op or tensor names:

- A matrix product of a weight with a replicated input may split the weight's rows (column
  parallel): its result is then split along dim 0.
- Splits flow through ops by the rule the op table names (`OpDef.split`): element-wise maps,
  row-wise ops along another dim, views (heads are a factor of the split dimension), ROPE on heads,
  attention on heads with grouped-query heads kept with their KV heads, cache writes (the KV cache
  splits with the rows written into it).
- A matrix product whose input is split along the contracted dim splits its weight's columns (row
  parallel): each rank holds a partial sum, and an ALL_REDUCE follows at once.
- Anything else that meets a split (a graph output, a norm over the split dim, a sum with a
  replicated tensor of full size, a shape that does not divide) is a conflict: the column-parallel
  products the split came from are banned (stay replicated) and the propagation runs again, until
  none is left. What cannot be split is computed on every rank: slower, never wrong.

The graphs of one program (prefill and decode) are partitioned together, so a weight or a KV cache
that they share splits the same way in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import GgcError
from ..ir.graph import GgufData, Graph, Tensor
from ..ir.types import contiguous_strides

Shape = tuple[int, int, int, int]
MAX_ROUNDS = 1000


@dataclass(frozen=True)
class Split:
    """Split along `dim` into equal contiguous parts, one per rank; `origins` are the column-parallel
    weights whose choice it follows from (banning them undoes it)."""

    dim: int
    origins: frozenset[str]


@dataclass(frozen=True)
class Partial:
    """Each rank holds a partial sum (a row-parallel product): an ALL_REDUCE follows."""

    origins: frozenset[str]


State = Split | Partial | None  # None: replicated


class _Conflict(Exception):
    def __init__(self, origins: frozenset[str]) -> None:
        self.origins = origins


@dataclass
class Local:
    """How a tensor of the rank's graph relates to the captured one: `split` is the dim of the
    captured tensor it is this rank's part of (None: all of it); `partial`: a partial sum (the
    captured value is the sum over ranks)."""

    tensor: Tensor  # the captured tensor
    split: int | None = None
    partial: bool = False


@dataclass
class Partitioned:
    graph: Graph  # the local graph every rank runs
    ranks: int
    origin: dict[int, Local] = field(default_factory=dict)  # local tensor id -> captured tensor


def _is_weight(t: Tensor) -> bool:
    return t.is_leaf and t.view_src is None and isinstance(t.data, GgufData)


def _leaf_key(t: Tensor) -> str:
    """Leafs shared between the graphs of one program are matched by name (weights by GGUF name)."""
    return t.data.name if isinstance(t.data, GgufData) else t.name


def view_split(root_ne: Sequence[int], root_nb: Sequence[int], root_blck: int, d: int, ranks: int,
               ne: Sequence[int], nb: Sequence[int], offs: int, blck: int = 1
               ) -> tuple[int, Shape, Shape, int] | None:
    """A view (ne, nb, offs) of a contiguous root split along d: the view dim that carries the split,
    and the view's local ne, nb and offset over the rank's local root; None when the view does not
    see the root's split as one of its own dims in equal parts (it interleaves ranks, or covers part
    of the split dim). Sizes of dim 0 count blocks for quantized types."""
    B = root_nb[d]
    N = root_ne[d] // (root_blck if d == 0 else 1)
    pieces: list[tuple[int, int, int]] = []  # (view dim, extent, byte stride), each inside one root digit
    for k in range(4):
        n = ne[k] // (blck if k == 0 else 1)
        if n == 1:
            continue
        s = nb[k]
        if s < B < s * n:  # a dim that merges lower root dims with the split one
            if B % s or (s * n) % B:
                return None
            pieces += [(k, B // s, s), (k, s * n // B, B)]
        else:
            pieces.append((k, n, s))
    if offs % B + sum((n - 1) * s for _, n, s in pieces if s < B) >= B:
        return None
    if (offs // B) % N:
        return None  # starts inside the split dim
    moving: list[tuple[int, int, int]] = []
    for k, n, s in pieces:
        if s < B:
            continue
        if s % B:
            return None
        m = s // B
        if m < N:
            moving.append((k, n, m))
        elif m % N:
            return None
    if not moving:
        return None
    kv, nv, mv = max(moving, key=lambda p: p[2])
    rest = sum((n - 1) * m for k, n, m in moving if (k, n, m) != (kv, nv, mv))
    if nv % ranks or mv * nv != N or rest >= mv:
        return None
    lne = list(ne)
    lne[kv] //= ranks
    lnb = [s // ranks if s >= B * N and s % (B * N) == 0 else s for s in nb]
    loffs = (offs // B // N) * (N // ranks) * B + offs % B
    return kv, (lne[0], lne[1], lne[2], lne[3]), (lnb[0], lnb[1], lnb[2], lnb[3]), loffs


class _Propagation:
    """One pass over one graph under a set of banned weights: the state of every tensor, the split
    of each leaf, and the conflicts met."""

    def __init__(self, g: Graph, ranks: int, banned: set[str], exact: bool) -> None:
        self.g, self.ranks, self.banned, self.exact = g, ranks, banned, exact
        self.st: dict[int, State] = {}
        self.leaf_split: dict[int, Split] = {}  # weights and state given a split by their readers
        self.leaf_whole: set[int] = set()  # leafs some reader took whole
        self.conflicts: set[str] = set()
        self.views: dict[int, tuple[int, Shape, Shape, int]] = {}  # split views: (dim, ne, nb, offs)
        self.gathered: set[int] = set()  # split results that an ALL_GATHER makes whole
        self.reads_whole: dict[int, set[int]] = {}  # node -> its sources it reads gathered
        for t in g.tensors:
            if t.is_leaf:
                self.st[t.id] = None
                continue
            try:
                self.st[t.id] = self._attempt(t)
            except _Conflict as first:
                conflict: _Conflict | None = first
                if self._gather_for(t, [s for s in [*t.src, t.view_src] if s is not None]):
                    try:
                        self.st[t.id] = self._attempt(t)
                        conflict = None
                    except _Conflict as again:
                        conflict = again
                if conflict is not None:
                    self.conflicts |= conflict.origins
                    self.st[t.id] = None
        for t in g.outputs():
            s = self.state(t)
            if s is not None and not (t.view_src is None and self._gather_for(None, [t])):
                self.conflicts |= s.origins

    def _attempt(self, t: Tensor) -> State:
        """t's rule; on a conflict, the leaf splits it made are undone."""
        split, whole = dict(self.leaf_split), set(self.leaf_whole)
        try:
            return self._rule(t)
        except _Conflict:
            self.leaf_split, self.leaf_whole = split, whole
            raise

    def _gather_for(self, t: Tensor | None, srcs: list[Tensor]) -> bool:
        """Let t (None: the graph's outputs) read its split sources whole, each through an ALL_GATHER
        of its root; False when one cannot be gathered (a split leaf) or gathering is off."""
        split = [s for s in srcs if isinstance(self.state(s), Split)
                 and (t is None or s.id not in self.reads_whole.get(t.id, set()))]
        if not self.exact or not split or any((s.view_src or s).is_leaf for s in split):
            return False
        for s in split:
            self.gathered.add((s.view_src or s).id)
            if t is not None:
                self.reads_whole.setdefault(t.id, set()).add(s.id)
        return True

    # ---- leafs: split on demand, once
    def state(self, t: Tensor) -> State:
        """t's state as its readers see it: a partial sum is read after its ALL_REDUCE, whole."""
        if t.is_leaf:
            return self.leaf_split.get(t.id)
        s = self.st[t.id]
        return None if isinstance(s, Partial) else s

    def _whole(self, t: Tensor) -> None:
        """t is read whole (replicated); a leaf split already conflicts."""
        if t.is_leaf:
            s = self.leaf_split.get(t.id)
            if s is not None:
                raise _Conflict(s.origins)
            self.leaf_whole.add(t.id)

    def _split_leaf(self, t: Tensor, dim: int, origins: frozenset[str]) -> Split:
        if t.id in self.leaf_whole:
            raise _Conflict(origins)
        s = self.leaf_split.get(t.id)
        if s is not None and s.dim != dim:
            raise _Conflict(origins | s.origins)
        n = t.ne[dim] // (t.type.blck_size if dim == 0 else 1)
        if n % self.ranks:
            raise _Conflict(origins)
        s = Split(dim, origins | (s.origins if s else frozenset()))
        self.leaf_split[t.id] = s
        return s

    def _srcs(self, t: Tensor) -> list[tuple[Tensor, State]]:
        whole = self.reads_whole.get(t.id, set())
        return [(s, None if s.id in whole else self.state(s)) for s in t.src if s is not None]

    @staticmethod
    def _origins(states: Sequence[State]) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for s in states:
            if s is not None:
                out |= s.origins
        return out

    def _rule(self, t: Tensor) -> State:
        srcs = self._srcs(t)
        states = [s for _, s in srcs]
        rule = t.opdef.split
        if rule == "view":
            return self._view(t)
        if all(s is None for s in states) and rule not in ("matmul", "matmul_id", "set_rows"):
            for s, _ in srcs:
                self._whole(s)
            return None
        fn = getattr(self, f"_{rule}", None) if rule else None
        if fn is None:
            raise _Conflict(self._origins(states))
        return fn(t, srcs)

    # ---- the rules (OpDef.split)
    def _map(self, t: Tensor, srcs: list[tuple[Tensor, State]]) -> State:
        dims = {s.dim for _, s in srcs if isinstance(s, Split)}
        origins = self._origins([s for _, s in srcs])
        if len(dims) != 1:
            raise _Conflict(origins)
        d = dims.pop()
        if t.op == "GLU" and len(srcs) == 1 and d == 0:
            raise _Conflict(origins)  # one source holding gate and up halves along dim 0
        for s, st in srcs:
            if isinstance(st, Split):
                if s.ne[d] != t.ne[d] and not (t.op == "GLU" and len(srcs) == 1):
                    raise _Conflict(origins)
            elif s.ne[d] == 1:
                self._whole(s)  # broadcast along the split
            elif _is_weight(s) and s.ne[d] == t.ne[d]:
                self._split_leaf(s, d, origins)  # a bias or scale of the split rows: split it too
            else:
                raise _Conflict(origins)
        return Split(d, origins)

    def _rows(self, t: Tensor, srcs: list[tuple[Tensor, State]]) -> State:
        sa, rest = srcs[0][1], srcs[1:]
        origins = self._origins([s for _, s in srcs])
        if not isinstance(sa, Split) or sa.dim == 0:
            raise _Conflict(origins)
        for s, st in rest:
            if st is not None or s.ne[sa.dim] != 1:
                raise _Conflict(origins)
            self._whole(s)
        return Split(sa.dim, origins)

    def _rope(self, t: Tensor, srcs: list[tuple[Tensor, State]]) -> State:
        sa, rest = srcs[0][1], srcs[1:]
        origins = self._origins([s for _, s in srcs])
        # positions index dim 2 and frequency factors dim 0: only heads (dim 1) may split
        if not isinstance(sa, Split) or sa.dim != 1 or any(st is not None for _, st in rest):
            raise _Conflict(origins)
        for s, _ in rest:
            self._whole(s)
        return sa

    def _matmul(self, t: Tensor, srcs: list[tuple[Tensor, State]]) -> State:
        (a, sa), (b, sb) = srcs
        origins = self._origins([sa, sb])
        if isinstance(sb, Split) and sb.dim == 0 and self.exact:
            raise _Conflict(origins)  # no partial sums: gather the input, split the rows instead
        if isinstance(sb, Split) and sb.dim == 0:  # the contracted dim: partial sums
            if isinstance(sa, Split) and sa.dim == 0:
                return Partial(origins)
            if sa is None and _is_weight(a):
                self._split_leaf(a, 0, origins)  # row parallel
                return Partial(origins)
            raise _Conflict(origins)
        if isinstance(sb, Split):
            d = sb.dim
            if d == 1 and sa is None:
                self._whole(a)
                return Split(1, origins)
            if d >= 2 and ((isinstance(sa, Split) and sa.dim == d) or (sa is None and a.ne[d] == 1)):
                if sa is None:
                    self._whole(a)
                return Split(d, origins)
            raise _Conflict(origins)
        if isinstance(sa, Split):
            if sa.dim == 1:
                self._whole(b)
                return Split(0, origins)
            raise _Conflict(origins)
        self._whole(b)
        return self._column(t, a)

    def _column(self, t: Tensor, a: Tensor) -> State:
        """A product of a weight and a replicated input: split the weight's rows, unless banned."""
        name = _leaf_key(a)
        if (_is_weight(a) and name not in self.banned and a.id not in self.leaf_whole
                and a.ne[1] % self.ranks == 0):
            return Split(0, self._split_leaf(a, 1, frozenset({name})).origins)
        self._whole(a)
        return None

    def _matmul_id(self, t: Tensor, srcs: list[tuple[Tensor, State]]) -> State:
        (a, sa), (b, sb), (ids, si) = srcs
        origins = self._origins([sa, sb, si])
        if si is not None or sa is not None or not _is_weight(a):
            raise _Conflict(origins)
        self._whole(ids)
        if isinstance(sb, Split) and sb.dim == 0 and not self.exact:
            self._split_leaf(a, 0, origins)
            return Partial(origins)
        if sb is not None:
            raise _Conflict(origins)
        self._whole(b)
        return self._column(t, a)

    def _attention(self, t: Tensor, srcs: list[tuple[Tensor, State]]) -> State:
        origins = self._origins([s for _, s in srcs])
        (q, sq), (k, sk), (v, sv) = srcs[:3]
        if not all(isinstance(s, Split) and s.dim == 2 for s in (sq, sk, sv)):
            raise _Conflict(origins)
        for s, st in srcs[3:]:  # the mask (over cells and tokens, shared by the heads); sinks are per head
            if st is not None or t.src.index(s) != 3 or s.ne[2] != 1:
                raise _Conflict(origins)
            self._whole(s)
        return Split(1, origins)  # the result is [head dim, heads, tokens]

    def _get_rows(self, t: Tensor, srcs: list[tuple[Tensor, State]]) -> State:
        (a, sa), (idx, si) = srcs
        origins = self._origins([sa, si])
        if si is not None or not isinstance(sa, Split) or sa.dim != 0:
            raise _Conflict(origins)
        self._whole(idx)
        return sa

    def _set_rows(self, t: Tensor, srcs: list[tuple[Tensor, State]]) -> State:
        (rows, sr), (idx, si) = srcs[:2]
        dst = t.src[2] if len(t.src) > 2 else None
        origins = self._origins([sr, si])
        if dst is None or not dst.is_leaf or dst.view_src is not None or si is not None:
            raise _Conflict(origins)
        self._whole(idx)
        if sr is None:
            self._whole(dst)
            return None
        if not isinstance(sr, Split) or sr.dim != 0 or rows.ne[0] != dst.ne[0]:
            raise _Conflict(origins)
        return self._split_leaf(dst, 0, origins)  # the cache splits with the rows written into it

    def _view(self, t: Tensor) -> State:
        r = t.view_src
        assert r is not None
        sr = None if t.id in self.reads_whole else self.state(r)
        if sr is None:
            self._whole(r)
            return None
        got = view_split(r.ne, r.nb, r.type.blck_size, sr.dim, self.ranks, t.ne, t.nb, t.view_offs,
                         t.type.blck_size)
        if got is None:
            raise _Conflict(sr.origins)
        self.views[t.id] = got
        return Split(got[0], sr.origins)

    def _copy(self, t: Tensor, srcs: list[tuple[Tensor, State]]) -> State:
        (a, sa), = srcs
        assert isinstance(sa, Split)
        if tuple(a.ne) == tuple(t.ne):
            return sa
        # a copy that also reshapes: the result is a view of a contiguous copy of the source
        got = view_split(a.ne, contiguous_strides(t.type, a.ne), t.type.blck_size, sa.dim, self.ranks, t.ne,
                         contiguous_strides(t.type, t.ne), 0, t.type.blck_size)
        if got is None:
            raise _Conflict(sa.origins)
        return Split(got[0], sa.origins)


def _propagate(graphs: Sequence[Graph], ranks: int, exact: bool) -> list[_Propagation]:
    """Propagate under growing bans until no graph has a conflict and shared leafs agree."""
    banned: set[str] = set()
    for _ in range(MAX_ROUNDS):
        props = [_Propagation(g, ranks, banned, exact) for g in graphs]
        new = set().union(*(p.conflicts for p in props))
        by_key: dict[str, list[Split | None]] = {}  # how each graph took a shared leaf
        for p in props:
            for t in p.g.leafs:
                if t.id in p.leaf_split or t.id in p.leaf_whole:
                    by_key.setdefault(_leaf_key(t), []).append(p.leaf_split.get(t.id))
        for ways in by_key.values():
            if len({None if w is None else w.dim for w in ways}) > 1:
                new |= _Propagation._origins(ways)
        if not new - banned:
            if new:
                raise GgcError("partition: a conflict that banning cannot resolve")
            return props
        banned |= new
    raise GgcError(f"partition: no consistent split after {MAX_ROUNDS} rounds")


def _localize(p: _Propagation) -> Partitioned:
    """The rank's graph: split tensors at their local shapes, an ALL_REDUCE after each partial sum,
    an ALL_GATHER after each split result that something reads whole."""
    g, R = p.g, p.ranks
    out: list[Tensor] = []
    new: dict[int, Tensor] = {}  # captured id -> the local tensor that stands for it
    whole: dict[int, Tensor] = {}  # captured id -> its value made whole (ALL_GATHER, or a view of one)
    origin: dict[int, Local] = {}

    def add(t: Tensor, loc: Local) -> Tensor:
        t.id = len(out)
        out.append(t)
        origin[t.id] = loc
        return t

    def read_whole(s: Tensor) -> Tensor:
        """s as a reader that needs all of it sees it: a view is made again over the gathered root."""
        if s.id not in whole:
            r = s.view_src
            assert r is not None and r.id in whole, f"{s.label()} is split and not gathered"
            v = Tensor(id=0, type=s.type, ne=s.ne, nb=s.nb, op=s.op, params=dict(s.params), raw=dict(s.raw),
                       src=[whole[r.id]], view_src=whole[r.id], view_offs=s.view_offs, flags=s.flags, name=s.name)
            whole[s.id] = add(v, Local(s))
        return whole[s.id]

    for t in g.tensors:
        s = p.leaf_split.get(t.id) if t.is_leaf else p.st[t.id]
        ne, nb, offs = t.ne, t.nb, t.view_offs
        params = dict(t.params)
        data = t.data
        if isinstance(s, Split):
            if t.id in p.views:
                _, ne, nb, offs = p.views[t.id]
            else:
                lne = list(t.ne)
                lne[s.dim] //= R
                ne = (lne[0], lne[1], lne[2], lne[3])
                nb = contiguous_strides(t.type, ne)  # type: ignore[assignment]
            if t.op == "VIEW":  # only non-zero params are kept (the format writes no zero)
                params.pop("offset", None)
                if offs:
                    params["offset"] = offs
            if t.is_leaf and isinstance(t.data, GgufData):
                data = GgufData(t.data.name, s.dim)
        partial, gathered = isinstance(s, Partial), t.id in p.gathered
        flags = t.flags - {"output"} if partial or gathered else t.flags
        wanted = p.reads_whole.get(t.id, set())
        srcs = [None if x is None else read_whole(x) if x.id in wanted else new[x.id] for x in t.src]
        view_src = None
        if t.view_src is not None:
            view_src = read_whole(t.view_src) if t.id in wanted or t.view_src.id in wanted else new[t.view_src.id]
        lt = Tensor(id=0, type=t.type, ne=tuple(ne), nb=tuple(nb), op=t.op, params=params,  # type: ignore[arg-type]
                    raw=dict(t.raw), src=srcs, view_src=view_src, view_offs=offs, flags=flags, name=t.name,
                    data=data)
        add(lt, Local(t, s.dim if isinstance(s, Split) else None, partial))
        new[t.id] = lt
        if partial:
            ar = Tensor(id=0, type=t.type, ne=t.ne, nb=t.nb, op="ALL_REDUCE", src=[lt], flags=t.flags, name=t.name)
            new[t.id] = add(ar, Local(t))
        if gathered:
            assert isinstance(s, Split)
            ag = Tensor(id=0, type=t.type, ne=t.ne, nb=t.nb, op="ALL_GATHER", params={"dim": s.dim}, src=[lt],
                        flags=t.flags, name=t.name)
            whole[t.id] = add(ag, Local(t))
    local = Graph(out, {**g.meta, "ranks": R})
    local.validate()
    return Partitioned(local, R, origin)


def partition(graphs: Sequence[Graph], ranks: int, exact: bool = True) -> list[Partitioned]:
    """Each graph of one program as every rank runs it, with the same splits of shared weights and
    state. ranks == 1 gives the graphs unchanged.

    exact: no product is split along its sum; what reads a split result whole (the next product,
    a residual add) reads it through an ALL_GATHER. Every value is then computed as on one rank, in
    the same order, and the result is bit-identical to the unpartitioned program's. Otherwise
    (Megatron's scheme) a product whose input is split splits its columns and an ALL_REDUCE adds the
    partial sums: fewer collectives, results equal to rounding."""
    if ranks < 1:
        raise GgcError(f"--ranks must be at least 1, got {ranks}")
    if ranks == 1:
        return [Partitioned(g, 1, {t.id: Local(t) for t in g.tensors}) for g in graphs]
    for g in graphs:
        if int(g.meta.get("ranks", 1)) != 1:
            raise GgcError("partition: the graph is already partitioned")
        if any(t.op in ("ALL_REDUCE", "ALL_GATHER") for t in g.tensors):
            raise GgcError("partition: the graph already holds ALL_REDUCE or ALL_GATHER nodes")
    return [_localize(p) for p in _propagate(graphs, ranks, exact)]


def summary(parts: Sequence[Partitioned]) -> str:
    """What split: weights by dim, bytes per rank against the whole, all-reduces per graph."""
    lines = []
    for part in parts:
        g = part.graph
        w_local = sum(t.nbytes for t in g.leafs if isinstance(t.data, GgufData))
        w_whole = sum(part.origin[t.id].tensor.nbytes for t in g.leafs if isinstance(t.data, GgufData))
        n_split = len(g.split_weights())
        n_w = sum(1 for t in g.leafs if isinstance(t.data, GgufData))
        comm = [t for t in g.nodes if t.op in ("ALL_REDUCE", "ALL_GATHER")]
        kinds = ", ".join(f"{sum(t.op == op for t in comm)} {op.lower().replace('_', '-')}s"
                          for op in ("ALL_REDUCE", "ALL_GATHER") if any(t.op == op for t in comm)) or "none"
        lines.append(f"{g.meta.get('n_tokens', '?')} tokens: {n_split} of {n_w} weights split, "
                     f"{w_local / 2**20:.1f} of {w_whole / 2**20:.1f} MiB of weights per rank, "
                     f"collectives: {kinds} ({sum(t.nbytes for t in comm) / 2**10:.1f} KiB)")
    return "\n".join(lines)
