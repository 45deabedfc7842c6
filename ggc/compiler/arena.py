"""The arena plan: one buffer, four regions, every tensor at an offset.

    [ weights | state | io | scratch ]

- weights: bound to GGUF tensors, loaded once. A target may keep some in host memory (the CUDA
  target's token embedding, which only GET_ROWS reads, a few rows a step): those come first, in
  [0, host_size), and the target's device memory starts at host_size;
- state: the KV cache, kept across runs;
- io: inputs, which the caller writes before a run and which survive it (a rerun needs them);
- scratch: every kernel result. Outputs are scratch buffers pinned from the group that writes
  them to the end of the run, so they can reuse memory that died before them. Scratch offsets
  come from liveness over the kernel groups: a buffer lives from the group that writes it to
  the last group that reads it (directly or through a view). A result may take over a source's
  memory in place (ggml-alloc's rule: an op that can run in place, a source with no other
  reader and no views, the same layout), and the rest are placed greedily by size into the
  best-fitting gap among buffers that overlap them in time.
  `reuse=False` gives every buffer its own memory (the debug build that keeps every intermediate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import GgcError
from ..ir.graph import Graph, Tensor
from .passes import ELEMENTWISE_FUSION, PURE_VIEWS, Fusion, Group, live_nodes, make_groups, root

ALIGN = 64  # bytes: a cache line, and a multiple of every SIMD width the kernels use
REGIONS = ("weights", "state", "io", "scratch")
INPLACE_OPS = frozenset({"SCALE", "ADD", "ADD_ID", "SUB", "MUL", "DIV", "UNARY", "ROPE", "RMS_NORM", "CLAMP",
                         "SOFT_MAX", "FILL"})


def align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass
class Buffer:
    """The memory of one storage root."""

    tensor: Tensor
    region: str
    size: int
    offset: int = 0  # within its region
    first: int = 0  # first group that writes it (scratch)
    last: int = 0  # last group that reads it (scratch)
    shares: Tensor | None = None  # in-place: the root whose memory this one takes over


@dataclass
class Plan:
    graph: Graph
    groups: list[Group]
    live: set[int]
    buffers: dict[int, Buffer] = field(default_factory=dict)  # by root tensor id
    region_offset: dict[str, int] = field(default_factory=dict)
    region_size: dict[str, int] = field(default_factory=dict)
    reuse: bool = True
    arena_size: int | None = None  # set when several graphs share one arena (see plan_shared)
    host_size: int = 0  # weights in [0, host_size) live in host memory (plan_shared's host_weight)

    @property
    def size(self) -> int:
        return self.arena_size if self.arena_size is not None else sum(self.region_size.values())

    def has_memory(self, t: Tensor) -> bool:
        """False for dead tensors and for intermediates a fused group keeps to itself."""
        return root(t).id in self.buffers

    def offset_of(self, t: Tensor) -> int:
        """Byte offset of t's first element in the arena."""
        b = self.buffers.get(root(t).id)
        if b is None:
            raise GgcError(f"{t.label()} has no memory in this plan (dead, or fused inside a group)")
        return self.region_offset[b.region] + b.offset + t.view_offs

    def region_of(self, t: Tensor) -> str:
        return self.buffers[root(t).id].region

    def liveness_lower_bound(self) -> int:
        """The peak of bytes live at once in scratch: no placement can use less."""
        return max((self._live_bytes(step) for step in range(len(self.groups) + 1)), default=0)

    def _live_bytes(self, step: int) -> int:
        total, seen = 0, set()
        for b in self.scratch_buffers():
            owner = b
            while owner.shares is not None:  # an in-place result and its source are one buffer
                owner = self.buffers[owner.shares.id]
            if owner.tensor.id in seen:
                continue
            lo, hi = self._span(owner)
            if lo <= step <= hi:
                seen.add(owner.tensor.id)
                total += owner.size
        return total

    def _span(self, b: Buffer) -> tuple[int, int]:
        """Time span of a buffer including every result that took it over in place."""
        lo, hi = b.first, b.last
        for other in self.scratch_buffers():
            o = other
            while o.shares is not None:
                o = self.buffers[o.shares.id]
                if o is b:
                    lo, hi = min(lo, other.first), max(hi, other.last)
                    break
        return lo, hi

    def scratch_buffers(self) -> list[Buffer]:
        return [b for b in self.buffers.values() if b.region == "scratch"]


def region_for(t: Tensor) -> str:
    if "weight" in t.flags:
        return "weights"
    if "state" in t.flags:
        return "state"
    if t.is_leaf or "input" in t.flags:
        return "io"
    return "scratch"


def plan(graph: Graph, reuse: bool = True, fusion: Fusion = ELEMENTWISE_FUSION) -> Plan:
    live = live_nodes(graph)
    groups = make_groups(graph, live, fusion)
    p = Plan(graph, groups, live, reuse=reuse)
    outputs = {t.id for t in graph.outputs()}
    group_of: dict[int, int] = {t.id: g.id for g in groups for t in g.nodes}
    hidden = {t.id for g in groups for t in g.nodes if t not in g.outputs}  # fused away: no memory

    # Every storage root that something live touches gets a buffer.
    roots: dict[int, Tensor] = {}
    for t in graph.tensors:
        if t.id in live or (t.is_leaf and any(s.id in live for s in graph.consumers()[t.id])):
            r = root(t)
            if r.id not in hidden:
                roots.setdefault(r.id, r)
    for r in sorted(roots.values(), key=lambda x: x.id):
        p.buffers[r.id] = Buffer(r, region_for(r), align(r.nbytes))

    # Liveness of scratch buffers over groups: written by its group, read until its last reader.
    for g in groups:
        for t in g.nodes:
            b = p.buffers.get(root(t).id)
            if b is not None and b.region == "scratch" and root(t) is t:
                b.first = b.last = g.id
    for g in groups:
        for s in g.inputs():
            b = p.buffers.get(root(s).id)
            if b is not None and b.region == "scratch":
                b.last = max(b.last, g.id)
    # A pure view read by a later group keeps its root alive (inputs() sees the view itself).
    for t in graph.nodes:
        if t.op in PURE_VIEWS and t.id in live:
            b = p.buffers.get(root(t).id)
            if b is not None and b.region == "scratch":
                for u in graph.consumers()[t.id]:
                    if u.id in group_of:
                        b.last = max(b.last, group_of[u.id])

    for t in graph.outputs():
        b = p.buffers.get(root(t).id)
        if b is not None and b.region == "scratch":
            b.last = len(groups)  # read by the caller after the run
    if reuse:
        _inplace(p, graph, groups, outputs)
    for region in REGIONS:
        bufs = [b for b in p.buffers.values() if b.region == region and b.shares is None]
        if region == "scratch" and reuse:
            p.region_size[region] = _place_by_size(p, bufs)
        else:
            off = 0
            for b in bufs:
                b.offset = off
                off += b.size
            p.region_size[region] = off
    for b in p.buffers.values():
        if b.shares is not None:
            owner = b
            while owner.shares is not None:
                owner = p.buffers[owner.shares.id]
            b.offset = owner.offset
    off = 0
    for region in REGIONS:
        p.region_offset[region] = off
        off += p.region_size[region]
    return p


HOST_ALIGN = 4096  # the device part of an arena with host weights starts at a multiple of this


def plan_shared(graphs: list[Graph], reuse: bool = True, fusion: Fusion = ELEMENTWISE_FUSION,
                host_weight: Callable[[Plan, Tensor], bool] | None = None) -> list[Plan]:
    """Plans for graphs that run one at a time on one arena (prefill and decode of one model): the
    weights (by GGUF name) and the state (by name) are laid out once and shared; each graph's
    inputs and scratch start after them and may overlap the other graphs' (never live together).
    host_weight(plan, weight): the target keeps that weight in host memory (when every graph that
    reads it agrees); such weights are laid out first, in [0, host_size)."""
    plans = [plan(g, reuse=reuse, fusion=fusion) for g in graphs]

    def key_of(b: Buffer) -> str:
        t = b.tensor
        return t.data.name if b.region == "weights" and t.data is not None else t.name  # type: ignore[union-attr]

    on_host: dict[str, bool] = {}
    for p in plans:
        for b in p.buffers.values():
            if b.region == "weights":
                k = key_of(b)
                on_host[k] = on_host.get(k, True) and host_weight is not None and host_weight(p, b.tensor)
    shared: dict[str, dict[str, tuple[int, Tensor]]] = {"weights": {}, "state": {}}
    offs = {"weights": 0, "state": 0}
    host_size = 0
    for host_pass in (True, False):
        for p in plans:
            for b in p.buffers.values():
                if b.region not in shared or (b.region == "weights" and on_host[key_of(b)] != host_pass):
                    continue
                t, key = b.tensor, key_of(b)
                seen = shared[b.region].get(key)
                if seen is None:
                    shared[b.region][key] = (offs[b.region], t)
                    offs[b.region] += b.size
                elif (seen[1].type, seen[1].ne, seen[1].nb) != (t.type, t.ne, t.nb):
                    raise GgcError(f"{key!r} differs between the graphs: {seen[1].type.name} {list(seen[1].ne)} "
                                   f"vs {t.type.name} {list(t.ne)}")
                b.offset = shared[b.region][key][0]
        if host_pass and offs["weights"]:
            host_size = offs["weights"] = align(offs["weights"], HOST_ALIGN)
    arena = 0
    for p in plans:
        p.host_size = host_size
        p.region_size["weights"], p.region_size["state"] = offs["weights"], offs["state"]
        off = 0
        for region in REGIONS:
            p.region_offset[region] = off
            off += p.region_size[region]
        arena = max(arena, off)
    for p in plans:
        p.arena_size = arena
    return plans


def _inplace(p: Plan, graph: Graph, groups: list[Group], outputs: set[int]) -> None:
    """Let results take over a dying source's memory, as ggml-alloc does."""
    users = graph.consumers()
    has_views = {root(t).id for t in graph.nodes if t.view_src is not None and t.id in p.live}
    for g in groups:
        for t in g.outputs:
            b = p.buffers.get(t.id)
            if b is None or b.region != "scratch" or t.op not in INPLACE_OPS or t.view_src is not None:
                continue
            for s in t.src:
                if s is None or s.view_src is not None:
                    continue
                sb = p.buffers.get(s.id)
                if (sb is None or sb.region != "scratch" or sb.shares is not None or s.id in outputs
                        or s.id in has_views or len(users[s.id]) != 1 or sb.last != g.id
                        or s.ne != t.ne or s.nb != t.nb or s.type is not t.type):
                    continue
                if any(o.shares is sb.tensor for o in p.scratch_buffers()):
                    continue
                b.shares = s
                sb.last = max(sb.last, b.last)
                break


def _place_by_size(p: Plan, bufs: list[Buffer]) -> int:
    """Greedy by size: largest first, each into the best-fitting gap among time-overlapping buffers."""
    spans = {b.tensor.id: p._span(b) for b in bufs}
    placed: list[Buffer] = []
    end = 0
    for b in sorted(bufs, key=lambda x: (-x.size, x.tensor.id)):
        lo, hi = spans[b.tensor.id]
        busy = sorted((q.offset, q.offset + q.size) for q in placed
                      if not (spans[q.tensor.id][1] < lo or spans[q.tensor.id][0] > hi))
        best, best_gap, cursor = None, None, 0
        for start, stop in busy:
            gap = start - cursor
            if gap >= b.size and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, stop)
        b.offset = best if best is not None else cursor
        placed.append(b)
        end = max(end, b.offset + b.size)
    return end


def check(p: Plan) -> None:
    """No two scratch buffers that live at the same time overlap in memory."""
    bufs = [b for b in p.scratch_buffers() if b.shares is None]
    for i, a in enumerate(bufs):
        for b in bufs[i + 1 :]:
            (alo, ahi), (blo, bhi) = p._span(a), p._span(b)
            if alo <= bhi and blo <= ahi and a.offset < b.offset + b.size and b.offset < a.offset + a.size:
                raise GgcError(f"arena plan error: {a.tensor.label()} and {b.tensor.label()} overlap")
