"""Build small graphs with the real ggml C API from Python, then capture them into the IR.

    with GraphBuilder() as b:
        x = b.tensor("f32", (64, 8), name="x", data=np.ones((8, 64), np.float32))
        w = b.tensor("q8_0", (64, 32), name="w", data=quantized_bytes)
        y = b.op("mul_mat", w, x)
        graph = b.capture(y)

Each op is called through its real ggml_<name> function; SIGNATURES gives the C argument types
(ctypes cannot infer int64 or float arguments). Leaf data given here travels as inline bytes.
"""

from __future__ import annotations

import ctypes as C
from dataclasses import dataclass

import numpy as np

from ..errors import GgcError
from ..ir.graph import DataBinding, Graph, InlineData
from .ggml_lib import Ggml, GgmlTensor, load
from .walk import LiveGraph, read_tensor_bytes, to_ir

# Argument codes after the context: t tensor (or None), i int32, l int64, z size_t, f float, b bool.
SIGNATURES: dict[str, str] = {
    "dup": "t", "cont": "t", "transpose": "t", "sqr": "t", "sqrt": "t", "log": "t", "sin": "t", "cos": "t",
    "sum": "t", "sum_rows": "t", "mean": "t", "argmax": "t", "neg": "t", "abs": "t", "relu": "t",
    "silu": "t", "gelu": "t", "gelu_erf": "t", "gelu_quick": "t", "tanh": "t", "sigmoid": "t", "exp": "t",
    "swiglu": "t", "geglu": "t", "reglu": "t", "soft_max": "t", "cumsum": "t",
    "add": "tt", "sub": "tt", "mul": "tt", "div": "tt", "add1": "tt", "mul_mat": "tt", "out_prod": "tt",
    "cpy": "tt", "get_rows": "tt", "repeat": "tt", "swiglu_split": "tt", "geglu_split": "tt",
    "reglu_split": "tt", "set_rows": "ttt", "mul_mat_id": "ttt", "add_id": "ttt",
    "scale": "tf", "scale_bias": "tff", "rms_norm": "tf", "norm": "tf", "l2_norm": "tf", "leaky_relu": "tfb",
    "clamp": "tff", "fill": "tf", "soft_max_ext": "ttff", "flash_attn_ext": "ttttfff",
    "rope_ext": "tttiiiffffff", "rope_multi": "tttii" + "iiii" + "iffffff",
    "argsort": "ti", "top_k": "ti", "concat": "tti", "diag_mask_inf": "ti", "diag_mask_zero": "ti",
    "reshape_1d": "tl", "reshape_2d": "tll", "reshape_3d": "tlll", "reshape_4d": "tllll",
    "view_1d": "tlz", "view_2d": "tllzz", "view_3d": "tlllzzz", "view_4d": "tllllzzzz",
    "permute": "tiiii", "cont_2d": "tll", "cont_3d": "tlll", "cont_4d": "tllll",
    "pad": "tiiii", "arange": "fff", "get_rows_back": "ttt",
}
_CTYPES = {"t": C.c_void_p, "i": C.c_int, "l": C.c_int64, "z": C.c_size_t, "f": C.c_float, "b": C.c_bool}


@dataclass(frozen=True)
class Ref:
    """A tensor made by the builder (a live ggml_tensor pointer)."""

    ptr: int


class GraphBuilder:
    def __init__(self, mem_tensors: int = 4096, g: Ggml | None = None) -> None:
        self.g = g or load()
        b = self.g.base
        mem = mem_tensors * b.ggml_tensor_overhead() + b.ggml_graph_overhead_custom(mem_tensors, False)
        self.ctx = self.g.new_context(mem, no_alloc=True)
        self.data: dict[int, bytes] = {}
        self.cgraph: int | None = None
        self._fns: dict[str, object] = {}

    def close(self) -> None:
        if self.ctx:
            self.g.base.ggml_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> GraphBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tensor(self, type_name: str, ne: tuple[int, ...], name: str = "", *, input: bool = False,
               data: np.ndarray | bytes | None = None) -> Ref:
        if type_name not in self.g.type_num:
            raise GgcError(f"this ggml has no type {type_name!r}")
        arr = (C.c_int64 * len(ne))(*ne)
        p = self.g.base.ggml_new_tensor(self.ctx, self.g.type_num[type_name], len(ne), arr)
        if not p:
            raise GgcError("ggml_new_tensor failed (builder context full?)")
        if name:
            self.g.base.ggml_set_name(p, name.encode())
        if input:
            self.g.base.ggml_set_input(p)
        if data is not None:
            raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
            n = self.g.base.ggml_nbytes(p)
            if len(raw) != n:
                raise GgcError(f"tensor {name!r}: data has {len(raw)} bytes, the tensor {n}")
            self.data[p] = raw
        return Ref(p)

    def op(self, fn: str, *args: Ref | float | int | bool | None) -> Ref:
        """Call ggml_<fn>(ctx, *args) in the real library."""
        sig = SIGNATURES.get(fn)
        if sig is None:
            raise GgcError(f"the builder has no signature for ggml_{fn}")
        if len(args) != len(sig):
            raise GgcError(f"ggml_{fn} takes {len(sig)} arguments after the context, got {len(args)}")
        f = self._fns.get(fn)
        if f is None:
            f = getattr(self.g.base, "ggml_" + fn, None) or getattr(self.g.cpu, "ggml_" + fn)
            f.restype = C.c_void_p
            f.argtypes = [C.c_void_p] + [_CTYPES[c] for c in sig]
            self._fns[fn] = f
        cargs = [a.ptr if isinstance(a, Ref) else a for a in args]
        p = f(self.ctx, *cargs)  # type: ignore[operator]
        if not p:
            raise GgcError(f"ggml_{fn} returned NULL")
        return Ref(p)

    def name(self, t: Ref, name: str) -> Ref:
        self.g.base.ggml_set_name(t.ptr, name.encode())
        return t

    def struct(self, t: Ref) -> GgmlTensor:
        return self.g.tensor(t.ptr)

    def _classify(self, ptr: int, _s: GgmlTensor) -> tuple[frozenset[str], DataBinding]:
        raw = self.data.get(ptr)
        return frozenset(), (InlineData(raw) if raw is not None else None)

    def capture(self, *outputs: Ref) -> Graph:
        """Build the forward graph of the outputs in ggml and read it into the IR."""
        graph, _ = self.capture_live(*outputs)
        return graph

    def capture_live(self, *outputs: Ref) -> tuple[Graph, LiveGraph]:
        b = self.g.base
        self.cgraph = b.ggml_new_graph_custom(self.ctx, 2048, False)
        for o in outputs:
            b.ggml_set_output(o.ptr)
            b.ggml_build_forward_expand(self.cgraph, o.ptr)
        return to_ir(self.g, self.cgraph, self._classify)

    def compute(self, n_threads: int = 2) -> dict[int, bytes]:
        """Run the captured live graph itself on ggml's CPU backend: {IR id: node bytes}."""
        if self.cgraph is None:
            raise GgcError("capture() first")
        g, b = self.g, self.g.base
        from .walk import graph_pointers

        live = graph_pointers(self.cgraph)
        backend = g.cpu.ggml_backend_cpu_init()
        g.cpu.ggml_backend_cpu_set_n_threads(backend, n_threads)
        buf = b.ggml_backend_alloc_ctx_tensors(self.ctx, backend)
        try:
            if not buf:
                raise GgcError("could not allocate the builder's buffer")
            for p in live.ptrs[: live.n_leafs]:
                raw = self.data.get(p)
                if raw is not None:
                    b.ggml_backend_tensor_set(p, raw, 0, len(raw))
            if b.ggml_backend_graph_compute(backend, self.cgraph) != 0:
                raise GgcError("ggml compute failed")
            return {i: read_tensor_bytes(g, p) for i, p in enumerate(live.ptrs) if i >= live.n_leafs}
        finally:
            if buf:
                b.ggml_backend_buffer_free(buf)
            b.ggml_backend_free(backend)
