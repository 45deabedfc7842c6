"""Compiler passes over the IR: storage roots (views cost nothing), dead code, kernel groups.

- Views (RESHAPE, VIEW, PERMUTE, TRANSPOSE) are no kernel: a tensor lives in the memory of its
  storage root (its view parent, else itself) at view_offs, with its own strides.
- Dead code goes, driven by the graph's outputs and by writes into memory that outlives a run
  (the KV cache: SET_ROWS and CPY into a state tensor).
- Kernel groups are first class: a group is a list of nodes that one kernel call computes. Here a
  group is one node, or a chain of elementwise ops that a simple rule fuses (each intermediate has
  one consumer, the same shape, and is not an output). A backend may also name row-wise ops (a
  norm: each output row needs its whole input row) that can head such a chain: one block per row
  then keeps the row in registers from the reduction to the last elementwise op.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.graph import Graph, Tensor

# Ops that compute an element from the same element of their sources (with ggml's broadcast of
# later sources): a chain of them can run as one loop. A backend passes the subset it can fuse.
ELEMENTWISE = frozenset({"ADD", "SUB", "MUL", "DIV", "SCALE", "UNARY", "CLAMP"})
# Ops that never need a kernel: their result is their parent's memory seen with other strides.
PURE_VIEWS = frozenset({"RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE"})
# Row-wise ops that can head an elementwise chain (a backend passes the subset it can generate).
ROW_HEADS = frozenset({"RMS_NORM", "NORM"})
# Ops whose kernel can add a same-shaped tensor to its result as it stores it (a residual ADD).
ADD_EPILOGUES = frozenset({"MUL_MAT"})
# Two-source GLU ops that can be computed by the two matrix-vector products feeding them, in one
# kernel reading the shared input once (gate and up of a gated FFN at decode).
GLU_PAIRS = frozenset({"SWIGLU"})
# Products that may run as one launch with the other products of the same one-column input (Q, K
# and V of one norm): the launch reads the input once and covers every product's rows.
SIBLING_PRODUCTS = frozenset({"MUL_MAT"})
# Ops whose kernel can write its rows straight into the rows of a cache that the SET_ROWS reading it
# picks (K after ROPE: the roped rows never go to memory on their own).
ROW_STORES = frozenset({"ROPE"})
# Ops of which two consecutive nodes with the same parameters and the same sources past the first
# (Q's and K's ROPE: positions, frequency factors) may run as one launch over both inputs.
TWINS = frozenset({"ROPE"})
MAX_SIBLINGS = 3
# ROPE modes whose rotated pairs are adjacent elements (ggml's normal mode): the two rows of a pair are
# neighbouring rows of the product before it, so a product kernel that finishes rows two at a time can
# rotate them as it stores them (NEOX pairs rows half a head apart)
ADJACENT_PAIR_ROPE_MODES = frozenset({0})


@dataclass(frozen=True)
class Fusion:
    """What a backend's kernels can fuse (see make_groups): `elementwise` ops that may share a loop,
    row-wise `heads` that may start such a chain, ops whose kernel takes a residual ADD as an
    `epilogue`, two-source GLU ops (params "op") computed from the two products before them, and
    products that run together with their `siblings` (other products of the same input), and ops
    whose kernel `stores` its rows into the cache rows of the SET_ROWS that alone reads them;
    `sibling_stores`: one product of a sibling launch (not the first) may store its result that way
    too (V into its cache); `twins`: two consecutive nodes of one of these ops that differ in their
    first source only run as one launch (the second may then store its rows, as above);
    `rope_epilogues`: the ROPEs (and the SET_ROWS storing one) right after a sibling launch join it when
    they rotate its products' rows in adjacent pairs (_rope_epilogue_ok): Q and K are stored roped."""

    elementwise: frozenset[str] = ELEMENTWISE
    heads: frozenset[str] = frozenset()
    epilogues: frozenset[str] = frozenset()
    glu_pairs: frozenset[str] = frozenset()
    siblings: frozenset[str] = frozenset()
    stores: frozenset[str] = frozenset()
    sibling_stores: bool = False
    twins: frozenset[str] = frozenset()
    rope_epilogues: bool = False


ELEMENTWISE_FUSION = Fusion()  # elementwise chains only: the default
NO_FUSION = Fusion(elementwise=frozenset())


def root(t: Tensor) -> Tensor:
    """The tensor that owns t's memory."""
    return t.view_src if t.view_src is not None else t


def is_kernel(t: Tensor) -> bool:
    return not t.is_leaf and t.op not in PURE_VIEWS


@dataclass
class Group:
    """Nodes computed by one kernel call; outputs are the members read outside the group."""

    id: int
    nodes: list[Tensor]
    outputs: list[Tensor] = field(default_factory=list)

    @property
    def fused(self) -> bool:
        return len(self.nodes) > 1

    def inputs(self) -> list[Tensor]:
        """Sources from outside the group (leafs, views and other groups' nodes), first use order."""
        inside = {t.id for t in self.nodes}
        seen: dict[int, Tensor] = {}
        for t in self.nodes:
            for s in t.src:
                if s is not None and s.id not in inside:
                    seen.setdefault(s.id, s)
        return list(seen.values())


def live_nodes(graph: Graph) -> set[int]:
    """Ids of tensors needed for the outputs or for writes into persistent memory (dead-code elimination)."""
    persistent = {t.id for t in graph.leafs if t.flags & {"state", "weight", "input"}}
    roots = [t for t in graph.outputs()]
    roots += [t for t in graph.nodes if t.view_src is not None and t.view_src.id in persistent and is_kernel(t)]
    live: set[int] = set()
    stack = list(roots)
    while stack:
        t = stack.pop()
        if t.id in live:
            continue
        live.add(t.id)
        stack.extend(s for s in t.src if s is not None)
        if t.view_src is not None:
            stack.append(t.view_src)
    # A node that reads memory a live writer changes must run after it: ggml orders such pairs by
    # graph order alone (a FLASH_ATTN_EXT reads the cache that an earlier SET_ROWS wrote), and
    # keeping every live node in graph order preserves that.
    return live


def make_groups(graph: Graph, live: set[int], fusion: Fusion = ELEMENTWISE_FUSION) -> list[Group]:
    """Kernel groups in execution order, fused as `fusion` allows: elementwise chains (headed by a
    row-wise op, where allowed: the chain then follows the head's rows), a product and the ADD that
    alone reads its result, two matrix-vector products with the GLU that alone reads them, and
    matrix-vector products of one input (later ones move up to the first: they read nothing but that
    input and their weights, which are ready there)."""
    fuse, heads, epilogues = fusion.elementwise, fusion.heads, fusion.epilogues
    users = graph.consumers()
    outputs = {t.id for t in graph.outputs()}
    groups: list[Group] = []
    current: Group | None = None
    seq = [t for t in graph.nodes if t.id in live and is_kernel(t)]
    pairs = {i for i in range(len(seq) - 2) if str(seq[i + 2].params.get("op")) in fusion.glu_pairs
             and _glu_pair_ok(seq[i], seq[i + 1], seq[i + 2], users, outputs)}
    paired = pairs | {i + 1 for i in pairs} | {i + 2 for i in pairs}
    taken: set[int] = set()  # seq indices already placed in a group
    for i, t in enumerate(seq):
        if i in taken:
            continue
        if i in pairs:
            current = Group(len(groups), [t, seq[i + 1], seq[i + 2]])
            groups.append(current)
            taken |= {i + 1, i + 2}
            continue
        sib = _siblings(seq, i, paired | taken, fusion.siblings) if t.op in fusion.siblings else []
        if sib:
            current = Group(len(groups), [t] + [seq[j] for j in sib])
            groups.append(current)
            taken |= set(sib)
            if fusion.sibling_stores:
                store = _sibling_store(seq, i, current.nodes, taken | paired, users, outputs)
                if store is not None:
                    current.nodes.append(seq[store])
                    taken.add(store)
            continue
        prev = current.nodes[-1] if current is not None else None
        if (prev is not None and prev.op in fusion.twins and len(current.nodes) == 1 and t.op == prev.op
                and _twins_ok(prev, t, users, outputs)):
            current.nodes.append(t)
            continue
        twin = current is not None and len(current.nodes) == 2 and current.nodes[0].op == prev.op in fusion.twins
        if (prev is not None and prev.op in epilogues and len(current.nodes) == 1 and t.op == "ADD"
                and _add_epilogue_ok(prev, t, users, outputs)):
            current.nodes.append(t)
            continue
        if (prev is not None and prev.op in fusion.stores and (len(current.nodes) == 1 or twin) and t.op == "SET_ROWS"
                and _row_store_ok(prev, t, users, outputs) and t.ne[0] == prev.ne[0] * prev.ne[1]):
            current.nodes.append(t)
            continue
        chain = prev is not None and (prev.op in fuse or (prev.op in heads and len(current.nodes) == 1))
        if (chain and t.op in fuse and t.src and t.src[0] is prev and _fusable(prev, t, users, outputs)
                and not (prev.op in heads and not _row_head_ok(prev))):
            current.nodes.append(t)
            continue
        current = Group(len(groups), [t])
        groups.append(current)
    if fusion.rope_epilogues:
        groups = _join_rope_epilogues(groups, users, outputs)
    for g in groups:
        inside = {t.id for t in g.nodes}
        # a node writing into a leaf's memory (SET_ROWS into the KV cache) is a result even where no
        # node reads it: the state outlives the run
        g.outputs = [t for t in g.nodes if t is g.nodes[-1] or t.id in outputs
                     or (t.view_src is not None and t.view_src.is_leaf)
                     or any(u.id in outputs if u.op in PURE_VIEWS else u.id not in inside
                            for u in _readers(t, users, graph))]
    return groups


def _join_rope_epilogues(groups: list[Group], users: dict[int, list[Tensor]], outputs: set[int]) -> list[Group]:
    """A ROPE group (one ROPE or twins, and the SET_ROWS that may store the last) right after a sibling
    launch joins it when every ROPE rotates one of its products (_rope_epilogue_ok) and a stored one is
    not the first product (whose result is the call's own). Nothing runs between the two groups and the
    ROPEs read nothing else but leafs, so the launch may store the roped rows itself."""
    out: list[Group] = []
    for grp in groups:
        prev = out[-1] if out else None
        products = [t for t in prev.nodes if t.op == "MUL_MAT"] if prev is not None else []
        ropes = [t for t in grp.nodes if t.op == "ROPE"]
        store = grp.nodes[-1] if grp.nodes[-1].op == "SET_ROWS" else None
        rotated = [rotated_product(products, r) for r in ropes]
        if (prev is not None and len(products) > 1 and prev.nodes[:len(products)] == products and ropes
                and all(t.op == "SET_ROWS" for t in prev.nodes[len(products):])
                and grp.nodes[:len(ropes)] == ropes and len(grp.nodes) == len(ropes) + (store is not None)
                and all(_rope_epilogue_ok(products, r, users, outputs) for r in ropes)
                and len({id(x) for x in rotated}) == len(ropes)
                and (store is None or (store.type.name in ("f16", "bf16") and rotated[-1] is not products[0]))):
            prev.nodes += grp.nodes
            continue
        out.append(grp)
    for i, grp in enumerate(out):
        grp.id = i
    return out


def rotated_product(products: list[Tensor], rope: Tensor) -> Tensor | None:
    """The product whose memory the ROPE reads (directly or through views of it), or None."""
    x = root(rope.src[0]) if rope.src[0] is not None else None
    return x if any(x is p for p in products) else None


def _sole_view_reader(x: Tensor, prev: Tensor, reader: Tensor, users: dict[int, list[Tensor]], outputs: set[int],
                      ops: frozenset[str]) -> Tensor | None:
    """The node that reads prev, where reader reads x and x is prev or a chain of views of all of it (ops,
    contiguous, at offset 0, none an output), each read by the next alone; None when x is not such a chain."""
    while x is not prev:
        if (x.op not in ops or x.view_src is not prev or not x.is_contiguous() or x.view_offs != 0
                or x.id in outputs or [u.id for u in users[x.id]] != [reader.id] or not x.src or x.src[0] is None):
            return None
        reader, x = x, x.src[0]
    return reader


def _rope_epilogue_ok(products: list[Tensor], rope: Tensor, users: dict[int, list[Tensor]],
                      outputs: set[int]) -> bool:
    """A ROPE that a product kernel finishing rows in pairs can apply as it stores: it rotates all of one
    sibling product's rows (read by nothing else) in adjacent pairs (ADJACENT_PAIR_ROPE_MODES), every
    channel of a head, for one token, with positions and frequency factors that are leafs (ready before
    the launch); f32 in and out, contiguous; quantized weights (float ones measured slower fused: the
    one-column float kernel's lane 0 stores its rows one after the other, and the rotation lengthened
    that tail more than the ROPE launch cost)."""
    p = rotated_product(products, rope)
    if p is None or p.id in outputs:
        return False
    reader = _sole_view_reader(rope.src[0], p, rope, users, outputs, frozenset({"RESHAPE"}))
    if reader is None or [u.id for u in users[p.id]] != [reader.id]:
        return False
    pos = rope.src[1] if len(rope.src) > 1 else None
    ff = rope.src[2] if len(rope.src) > 2 else None
    pr = rope.params
    return (p.src[0] is not None and p.src[0].type.blck_size > 1
            and int(pr.get("mode", 0)) in ADJACENT_PAIR_ROPE_MODES and int(pr.get("n_dims", 0)) == rope.ne[0]
            and rope.ne[0] % 2 == 0 and rope.ne[2:] == (1, 1) and rope.nelements == p.nelements
            and rope.type.name == "f32" and p.type.name == "f32" and rope.is_contiguous() and rope.view_src is None
            and pos is not None and pos.is_leaf and pos.type.name == "i32" and pos.nelements == 1
            and (ff is None or (ff.is_leaf and ff.type.name == "f32")))


def _siblings(seq: list[Tensor], i: int, excluded: set[int], ops: frozenset[str]) -> list[int]:
    """Indices of later products in seq that can join seq[i] in one matrix-vector launch (at most
    MAX_SIBLINGS in all): the same one-column input, weights of one type and row layout
    (_one_column_weight_ok), f32 contiguous results."""
    a = seq[i]
    if not _sibling_ok(a):
        return []
    out = []
    for j in range(i + 1, len(seq)):
        b = seq[j]
        if len(out) == MAX_SIBLINGS - 1:
            break
        if (j not in excluded and b.op in ops and b.src[1] is a.src[1] and _sibling_ok(b)
                and b.src[0].type is a.src[0].type and b.src[0].ne[0] == a.src[0].ne[0]
                and b.src[0].nb[1] == a.src[0].nb[1]):
            out.append(j)
    return out


def _sibling_store(seq: list[Tensor], i: int, products: list[Tensor], excluded: set[int],
                   users: dict[int, list[Tensor]], outputs: set[int]) -> int | None:
    """The seq index of a SET_ROWS that stores one of a sibling launch's products (not the first, whose
    result is the launch's own) straight into its cache rows; it moves up into the launch, as it reads
    nothing but that product, its indices and the cache (f16 or bf16). At most one a launch."""
    for b in products[1:]:
        for j in range(i + 1, len(seq)):
            if (j not in excluded and seq[j].op == "SET_ROWS" and seq[j].type.name in ("f16", "bf16")
                    and _row_store_ok(b, seq[j], users, outputs)):
                return j
    return None


def _sibling_ok(t: Tensor) -> bool:
    if t.op != "MUL_MAT" or len(t.src) < 2 or t.src[0] is None or t.src[1] is None:
        return False
    w, x = t.src[0], t.src[1]
    return (x.ne[1:] == (1, 1, 1) and w.ne[2:] == (1, 1) and w.is_contiguous() and t.view_src is None
            and t.type.name == "f32" and t.is_contiguous() and _one_column_weight_ok(w))


def _one_column_weight_ok(w: Tensor) -> bool:
    """A weight the fused one-column kernels read: quantized, or float rows of whole 16-byte groups
    of 8 elements (their vector loads; the arena aligns every buffer to 64 bytes)."""
    return w.type.blck_size > 1 or (w.ne[0] % 8 == 0 and w.nb[1] % 16 == 0)


def _twins_ok(a: Tensor, b: Tensor, users: dict[int, list[Tensor]], outputs: set[int]) -> bool:
    """b, right after a in execution order, computes the same function of another first source: the same
    op parameters and the same later sources (positions, frequency factors), and the same shape and
    types; b's input was ready before a (it is not a's result), and both write their own f32 memory."""
    return (a.params == b.params and a.raw == b.raw and len(a.src) == len(b.src)
            and all(x is y for x, y in zip(a.src[1:], b.src[1:]))
            and b.src[0] is not None and root(b.src[0]) is not a and a.ne[2:] == b.ne[2:] and a.ne[0] == b.ne[0]
            and a.type is b.type and a.src[0] is not None and a.src[0].type is b.src[0].type
            and a.type.name == "f32" and a.view_src is None and b.view_src is None)


def _row_store_ok(prev: Tensor, t: Tensor, users: dict[int, list[Tensor]], outputs: set[int]) -> bool:
    """t = SET_ROWS(cache, rows of prev, idx) where prev (f32, contiguous, one sequence) is read by t
    alone, directly or through reshapes and views of all of it, as rows [ne0 * ne1, tokens] (K's
    heads after ROPE, [head, heads, tokens]; V's product, [rows, tokens]); a float cache with a row
    per token, one index per token."""
    rows, idx = t.src[0], t.src[1] if len(t.src) > 1 else None
    if rows is None or idx is None or prev.id in outputs or t.type.name not in ("f32", "f16", "bf16"):
        return False
    reader = _sole_view_reader(rows, prev, t, users, outputs, frozenset({"RESHAPE", "VIEW"}))
    if reader is None:
        return False
    row, n_tok = rows.ne[0], rows.ne[1]
    return ([u.id for u in users[prev.id]] == [reader.id] and prev.type.name == "f32" and prev.is_contiguous()
            and prev.view_src is None and prev.ne[3] == 1 and rows.ne[2:] == (1, 1)
            and row * n_tok == prev.nelements and t.ne[0] == row and idx.type.name in ("i32", "i64")
            and idx.ne == (n_tok, 1, 1, 1) and idx.is_contiguous())


def _readers(t: Tensor, users: dict[int, list[Tensor]], graph: Graph) -> list[Tensor]:
    """Every node that reads t, directly or through a view of it."""
    out, stack = [], list(users[t.id])
    while stack:
        u = stack.pop()
        out.append(u)
        if u.op in PURE_VIEWS:
            stack.extend(users[u.id])
    return out


def _fusable(prev: Tensor, t: Tensor, users: dict[int, list[Tensor]], outputs: set[int]) -> bool:
    """prev's value can stay in registers: t is its only reader, same shape, both contiguous."""
    return (len(users[prev.id]) == 1 and prev.id not in outputs and prev.ne == t.ne
            and prev.view_src is None and t.view_src is None and prev.is_contiguous() and t.is_contiguous()
            and prev.type.name == "f32" and t.type.name == "f32"
            and all(s is prev or s is None or s.is_leaf or s.id != prev.id for s in t.src[1:]))


def _row_head_ok(t: Tensor) -> bool:
    """A norm can head a fused row group: f32 in and out, normalizing along ne0 (all ggml norms do)."""
    src = t.src[0]
    return src is not None and src.type.name == "f32" and t.type.name == "f32" and src.ne == t.ne


def _add_epilogue_ok(prev: Tensor, t: Tensor, users: dict[int, list[Tensor]], outputs: set[int]) -> bool:
    """t = prev + other (either order), prev read by t alone, and all three f32 in one contiguous layout, so
    that prev's kernel can store prev + other where it would store prev, element for element."""
    if t.src.count(prev) != 1 or len(t.src) != 2 or len(users[prev.id]) != 1 or prev.id in outputs:
        return False
    other = t.src[1] if t.src[0] is prev else t.src[0]
    return (other is not None and prev.view_src is None and t.view_src is None
            and all(x.type.name == "f32" and x.ne == t.ne and x.is_contiguous() for x in (prev, t, other)))


def _glu_pair_ok(a: Tensor, b: Tensor, glu: Tensor, users: dict[int, list[Tensor]], outputs: set[int]) -> bool:
    """glu = GLU(a, b) with a = W_a x and b = W_b x two matrix-vector products (one column) of one input
    and weights of one type and layout (_one_column_weight_ok), each read by glu alone; all f32 and
    contiguous."""
    if a.op != "MUL_MAT" or b.op != "MUL_MAT" or glu.op != "GLU" or len(glu.src) < 2:
        return False
    wa, wb, x = a.src[0], b.src[0], a.src[1]
    return (glu.src[0] is a and glu.src[1] is b and b.src[1] is x and x.ne[1:] == (1, 1, 1)
            and wa.type is wb.type and _one_column_weight_ok(wa)
            and wa.ne == wb.ne and wa.nb == wb.nb and wa.ne[2:] == (1, 1)
            and all(len(users[t.id]) == 1 and users[t.id][0] is glu and t.id not in outputs and t.view_src is None
                    for t in (a, b))
            and all(t.type.name == "f32" and t.is_contiguous() and t.ne == glu.ne for t in (a, b, glu)))
