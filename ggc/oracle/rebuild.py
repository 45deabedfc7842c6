"""Rebuild an IR graph inside real ggml at the struct level and compute it on ggml's CPU backend.

Like the old ggml_graph_import: every IR tensor becomes a ggml_tensor with the same type, ne, nb,
op, op_params, flags, sources and view; every non-view tensor gets its own memory, so every
intermediate survives, and nodes are computed one at a time so each value is read right after
its node ran (what a later in-place write would otherwise hide).
"""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable, Mapping

from ..capture.ggml_lib import GGML_MAX_NAME, Ggml, load
from ..capture.walk import read_tensor_bytes
from ..errors import GgcError
from ..ir import params as prm
from ..ir.graph import GGML_FLAGS, GgufData, Graph, InlineData, Tensor

LeafData = Callable[[Tensor], bytes | None]


class Rebuilt:
    """A live ggml copy of an IR graph, with its own context, buffer and CPU backend."""

    def __init__(self, graph: Graph, n_threads: int = 2, g: Ggml | None = None, alloc: bool = True) -> None:
        """alloc=False leaves the memory to the caller, except for weights and state (as llama.cpp
        holds them in buffers of their own): used to measure ggml-alloc on the graph."""
        self.g = g or load()
        self.graph = graph
        b = self.g.base
        n = len(graph.tensors)
        mem = (n + 8) * b.ggml_tensor_overhead() + b.ggml_graph_overhead_custom(max(8, n), False)
        self.ctx = self.g.new_context(mem, no_alloc=True)
        self.ctx_p = self.g.new_context(mem, no_alloc=True) if not alloc else None
        self.buffer = None
        self.backend = None
        try:
            self.ptrs: list[int] = []
            for t in graph.tensors:
                persistent = t.is_leaf and t.view_src is None and bool(t.flags & {"weight", "state"})
                self.ptrs.append(self._make(t, self.ctx_p if (persistent and self.ctx_p) else self.ctx))
            self._step = b.ggml_new_graph_custom(self.ctx, 8, False)
            self.backend = self.g.cpu.ggml_backend_cpu_init()
            if not self.backend:
                raise GgcError("ggml_backend_cpu_init failed")
            self.g.cpu.ggml_backend_cpu_set_n_threads(self.backend, n_threads)
            self.buffer = b.ggml_backend_alloc_ctx_tensors(self.ctx_p or self.ctx, self.backend)
            if not self.buffer:
                raise GgcError("could not allocate the oracle's buffer (out of memory?)")
        except BaseException:
            self.close()
            raise

    def ggml_alloc_size(self) -> int:
        """The compute buffer ggml-alloc (ggml_gallocr) plans for this graph, in its node order."""
        from ..capture.ggml_lib import GgmlCgraphHead

        if self.ctx_p is None:
            raise GgcError("ggml_alloc_size needs a Rebuilt made with alloc=False")
        b = self.g.base
        n = len(self.graph.tensors)
        cg = b.ggml_new_graph_custom(self.ctx, n, False)
        for t in self.graph.nodes:
            b.ggml_graph_add_node(cg, self.ptrs[t.id])
        head = GgmlCgraphHead.from_address(cg)
        leafs = [self.ptrs[t.id] for t in self.graph.leafs if not (t.flags & {"weight", "state"})]
        for i, p in enumerate(leafs):
            head.leafs[i] = p
        head.n_leafs = len(leafs)
        galloc = b.ggml_gallocr_new(b.ggml_backend_cpu_buffer_type())
        try:
            if not b.ggml_gallocr_reserve(galloc, cg):
                raise GgcError("ggml_gallocr_reserve failed")
            return b.ggml_gallocr_get_buffer_size(galloc, 0)
        finally:
            b.ggml_gallocr_free(galloc)

    def _make(self, t: Tensor, ctx: int) -> int:
        g = self.g
        ne = (C.c_int64 * 4)(*t.ne)
        p = g.base.ggml_new_tensor(ctx, g.type_num[t.type.name], 4, ne)
        if not p:
            raise GgcError(f"{t.label()}: ggml_new_tensor failed")
        s = g.tensor(p)
        for i in range(4):
            s.nb[i] = t.nb[i]
        if t.op not in g.op_num:
            raise GgcError(f"{t.label()}: this ggml has no op {t.op}")
        s.op = g.op_num[t.op]
        for i, w in enumerate(prm.encode(t.opdef, t.params, t.raw, g.enum_value)):
            s.op_params[i] = prm.i32_from_word(w)
        s.flags = sum(bit for f, bit in GGML_FLAGS.items() if f in t.flags)
        if not t.is_leaf:
            # ggml's CPU backend skips nodes without this flag (ggml_build_forward_expand sets
            # it); in the IR every node runs, including graphs that never met that function.
            s.flags |= GGML_FLAGS["compute"]
        for j, src in enumerate(t.src):
            s.src[j] = self.ptrs[src.id] if src is not None else None
        if t.view_src is not None:
            s.view_src = self.ptrs[t.view_src.id]
            s.view_offs = t.view_offs
        g.base.ggml_set_name(p, t.name.encode("utf-8")[: GGML_MAX_NAME - 1])
        return p

    def close(self) -> None:
        b = self.g.base
        if self.buffer:
            b.ggml_backend_buffer_free(self.buffer)
            self.buffer = None
        if self.backend:
            b.ggml_backend_free(self.backend)
            self.backend = None
        for name in ("ctx", "ctx_p"):
            if getattr(self, name, None):
                b.ggml_free(getattr(self, name))
                setattr(self, name, None)

    def __enter__(self) -> Rebuilt:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- data
    def set_bytes(self, t: Tensor, data: bytes) -> None:
        if len(data) != t.nbytes:
            raise GgcError(f"{t.label()}: got {len(data)} bytes of data, the tensor holds {t.nbytes}")
        self.g.base.ggml_backend_tensor_set(self.ptrs[t.id], data, 0, len(data))

    def get_bytes(self, t: Tensor) -> bytes:
        return read_tensor_bytes(self.g, self.ptrs[t.id])

    def bind_leafs(self, leaf_data: LeafData) -> None:
        """Fill every leaf that owns memory; leaf_data may return None for a zero-filled leaf."""
        for t in self.graph.leafs:
            if t.view_src is not None:
                continue
            data = leaf_data(t)
            self.set_bytes(t, data if data is not None else bytes(t.nbytes))

    # ---- compute
    def run(self, on_node: Callable[[Tensor, bytes], None] | None = None) -> None:
        """Compute every node in order; on_node(tensor, bytes) sees each value right after its node."""
        b = self.g.base
        for t in self.graph.nodes:
            b.ggml_graph_clear(self._step)
            b.ggml_graph_add_node(self._step, self.ptrs[t.id])
            rc = b.ggml_backend_graph_compute(self.backend, self._step)
            if rc != 0:
                raise GgcError(f"{t.label()}: ggml compute failed with status {rc}")
            if on_node is not None:
                on_node(t, self.get_bytes(t))


def leaf_source(graph: Graph, gguf_path: str | None, values: Mapping[int, bytes]) -> LeafData:
    """Leaf data from the GGUF file (weights), inline bytes (constants) or values by tensor id (inputs, state)."""
    from ..formats.gguf_file import read_gguf

    gf = read_gguf(gguf_path) if gguf_path else None
    users = graph.consumers()

    def get(t: Tensor) -> bytes | None:
        if isinstance(t.data, InlineData):
            return t.data.data
        if isinstance(t.data, GgufData):
            if gf is None:
                raise GgcError(f"{t.label()}: bound to GGUF tensor {t.data.name!r} but no GGUF file was given")
            w = gf.tensor(t.data.name)
            if w.type is not t.type or w.ne != t.ne:
                raise GgcError(
                    f"{gf.path}: tensor {t.data.name!r} is {w.type.name} {list(w.ne)}, "
                    f"the graph expects {t.type.name} {list(t.ne)}"
                )
            return gf.data(w)
        if t.id in values:
            return values[t.id]
        if "input" in t.flags and users[t.id]:  # llama.cpp makes some inputs it never reads
            raise GgcError(f"{t.label()}: no value given for this input")
        return None

    return get
