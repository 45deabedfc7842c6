"""ctypes binding to the real libggml that llama-cpp-python installs.

Only what capture and the oracle need. The ggml_tensor and ggml_cgraph layouts are declared
here from ggml.h / ggml-impl.h and checked against the loaded library (`verify_layout`) by
building real tensors and reading them back; a mismatch is a clear error, never a bad walk.
Op, type and enum numbers are never hard-coded: they are looked up by name through
ggml_op_name, ggml_type_name, ggml_unary_op_name and ggml_glu_op_name.
"""

from __future__ import annotations

import ctypes as C
import functools
import re
from pathlib import Path

import numpy as np

from ..errors import GgcError

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64


class GgmlTensor(C.Structure):
    _fields_ = [
        ("type", C.c_int),
        ("buffer", C.c_void_p),
        ("ne", C.c_int64 * GGML_MAX_DIMS),
        ("nb", C.c_size_t * GGML_MAX_DIMS),
        ("op", C.c_int),
        ("op_params", C.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", C.c_int32),
        ("src", C.c_void_p * GGML_MAX_SRC),
        ("view_src", C.c_void_p),
        ("view_offs", C.c_size_t),
        ("data", C.c_void_p),
        ("name", C.c_char * GGML_MAX_NAME),
        ("extra", C.c_void_p),
        ("padding", C.c_char * 8),
    ]


class GgmlCgraphHead(C.Structure):
    """The leading fields of ggml's private struct ggml_cgraph (ggml-impl.h)."""

    _fields_ = [
        ("size", C.c_int),
        ("n_nodes", C.c_int),
        ("n_leafs", C.c_int),
        ("nodes", C.POINTER(C.c_void_p)),
        ("grads", C.POINTER(C.c_void_p)),
        ("grad_accs", C.POINTER(C.c_void_p)),
        ("leafs", C.POINTER(C.c_void_p)),
    ]


class GgmlInitParams(C.Structure):
    _fields_ = [("mem_size", C.c_size_t), ("mem_buffer", C.c_void_p), ("no_alloc", C.c_bool)]


GGML_OBJECT_SIZE = 32  # struct ggml_object: offs, size, next, type, padding[4]


def lib_dir() -> Path:
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - install problem
        raise GgcError(f"llama-cpp-python is not installed ({e}); run: pip install -e .") from None
    d = Path(llama_cpp.__file__).parent / "lib"
    if not d.is_dir():
        raise GgcError(f"llama-cpp-python has no lib/ folder at {d}")
    return d


def _find(d: Path, stem: str) -> Path:
    for cand in sorted(d.glob(f"lib{stem}.so*")) + sorted(d.glob(f"lib{stem}.dylib")):
        return cand
    raise GgcError(f"lib{stem} not found in {d}")


def _sig(lib: C.CDLL, name: str, res: object, *args: object) -> None:
    f = getattr(lib, name)
    f.restype = res
    f.argtypes = list(args)


class Ggml:
    """The loaded ggml libraries, with typed functions and name<->number maps."""

    def __init__(self) -> None:
        import llama_cpp.llama_cpp as ll  # loads libllama and, through it, libggml*

        d = lib_dir()
        self.llama = ll._lib  # type: ignore[attr-defined]
        self.base = C.CDLL(str(_find(d, "ggml-base")), mode=C.RTLD_GLOBAL)
        self.cpu = C.CDLL(str(_find(d, "ggml-cpu")), mode=C.RTLD_GLOBAL)
        b, vp, sz, i32, i64 = self.base, C.c_void_p, C.c_size_t, C.c_int, C.c_int64
        _sig(b, "ggml_init", vp, GgmlInitParams)
        _sig(b, "ggml_free", None, vp)
        _sig(b, "ggml_tensor_overhead", sz)
        _sig(b, "ggml_graph_overhead_custom", sz, sz, C.c_bool)
        _sig(b, "ggml_new_tensor", vp, vp, i32, i32, C.POINTER(i64))
        _sig(b, "ggml_new_graph_custom", vp, vp, sz, C.c_bool)
        _sig(b, "ggml_graph_n_nodes", i32, vp)
        _sig(b, "ggml_graph_size", i32, vp)
        _sig(b, "ggml_graph_nodes", vp, vp)
        _sig(b, "ggml_graph_node", vp, vp, i32)
        _sig(b, "ggml_graph_add_node", None, vp, vp)
        _sig(b, "ggml_graph_clear", None, vp)
        _sig(b, "ggml_build_forward_expand", None, vp, vp)
        _sig(b, "ggml_op_symbol", C.c_char_p, i32)
        _sig(b, "ggml_blck_size", i64, i32)
        _sig(b, "ggml_type_name", vp, i32)
        _sig(b, "ggml_type_size", sz, i32)
        _sig(b, "ggml_is_quantized", C.c_bool, i32)
        _sig(b, "ggml_nbytes", sz, vp)
        _sig(b, "ggml_get_data", vp, vp)
        _sig(b, "ggml_set_name", vp, vp, C.c_char_p)
        _sig(b, "ggml_set_input", None, vp)
        _sig(b, "ggml_set_output", None, vp)
        _sig(b, "ggml_add", vp, vp, vp, vp)
        _sig(b, "ggml_scale", vp, vp, vp, C.c_float)
        _sig(b, "ggml_view_2d", vp, vp, vp, i64, i64, sz, sz)
        _sig(b, "ggml_backend_alloc_ctx_tensors", vp, vp, vp)
        _sig(b, "ggml_backend_buffer_free", None, vp)
        _sig(b, "ggml_backend_tensor_set", None, vp, vp, sz, sz)
        _sig(b, "ggml_backend_tensor_get", None, vp, vp, sz, sz)
        _sig(b, "ggml_backend_graph_compute", i32, vp, vp)
        _sig(b, "ggml_backend_free", None, vp)
        _sig(b, "ggml_backend_cpu_buffer_type", vp)
        _sig(b, "ggml_gallocr_new", vp, vp)
        _sig(b, "ggml_gallocr_free", None, vp)
        _sig(b, "ggml_gallocr_reserve", C.c_bool, vp, vp)
        _sig(b, "ggml_gallocr_get_buffer_size", sz, vp, i32)
        _sig(b, "ggml_quantize_chunk", sz, i32, C.POINTER(C.c_float), vp, i64, i64, i64, C.POINTER(C.c_float))
        _sig(self.cpu, "ggml_backend_cpu_init", vp)
        _sig(self.cpu, "ggml_backend_cpu_set_n_threads", None, vp, i32)
        self._check_enums()
        verify_layout(self)

    # ---- enums by name
    def _scan(self, fn: str) -> list[str]:
        """Names of an enum in number order, read from the library's own name table.

        The libraries are stripped and ship no headers, so the enum's size is found by reading the
        table until an entry is not an op name (the table is followed by a NULL or other data).
        Every pointer is checked to lie inside libggml-base before it is read.
        """
        f = getattr(self.base, fn)
        f.restype, f.argtypes = C.c_void_p, [C.c_int]
        lo_hi = _mapped_ranges("libggml-base")
        names: list[str] = []
        for i in range(1024):
            p = f(i)
            if not p or not any(lo <= p < hi for lo, hi in lo_hi):
                break
            name = C.string_at(p, GGML_MAX_NAME).split(b"\0")[0].decode("latin-1")
            if not _ENUM_NAME.fullmatch(name) or name in names:
                break
            names.append(name)
        if not names:
            raise GgcError(f"cannot read ggml's {fn} table")
        return names

    def _check_enums(self) -> None:
        self.op_names = self._scan("ggml_op_name")
        self.unary_names = self._scan("ggml_unary_op_name")
        self.glu_names = self._scan("ggml_glu_op_name")
        # Removed type numbers stay in ggml's table as holes with a block size of 0.
        self.type_names: dict[int, str] = {}
        lo_hi = _mapped_ranges("libggml-base")
        for i in range(256):
            p = self.base.ggml_type_name(i)
            if not p or not any(lo <= p < hi for lo, hi in lo_hi):
                break
            name = C.string_at(p, GGML_MAX_NAME).split(b"\0")[0].decode("latin-1")
            if self.base.ggml_blck_size(i) == 0 and ("REMOVED" in name or name == "DEPRECATED"):
                continue
            if not _TYPE_NAME.fullmatch(name):
                break
            self.type_names[i] = name
        self.op_num = {n: i for i, n in enumerate(self.op_names)}
        self.type_num = {n: i for i, n in self.type_names.items()}

    def enum_name(self, kind: str, value: int) -> str | None:
        names = self.unary_names if kind == "unary" else self.glu_names
        return names[value] if 0 <= value < len(names) else None

    def enum_value(self, kind: str, name: str) -> int:
        names = self.unary_names if kind == "unary" else self.glu_names
        try:
            return names.index(name)
        except ValueError:
            raise GgcError(f"this ggml has no {kind} op {name!r}") from None

    def quantize(self, type_name: str, rows: np.ndarray) -> bytes:
        """Quantize float32 rows (shape [n_rows, n_per_row]) with ggml's own quantizer."""
        t = self.type_num[type_name]
        x = np.ascontiguousarray(rows, dtype=np.float32)
        n_rows, n_per_row = x.shape
        size = self.base.ggml_type_size(t) * (n_per_row // self.base.ggml_blck_size(t)) * n_rows
        out = C.create_string_buffer(size)
        written = self.base.ggml_quantize_chunk(t, x.ctypes.data_as(C.POINTER(C.c_float)), out, 0, n_rows,
                                                n_per_row, None)
        if written != size:
            raise GgcError(f"ggml_quantize_chunk wrote {written} bytes, expected {size}")
        return out.raw

    def tensor(self, ptr: int) -> GgmlTensor:
        return GgmlTensor.from_address(ptr)

    def new_context(self, mem_size: int, no_alloc: bool = True) -> int:
        ctx = self.base.ggml_init(GgmlInitParams(mem_size, None, no_alloc))
        if not ctx:
            raise GgcError("ggml_init failed")
        return ctx


_ENUM_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_TYPE_NAME = re.compile(r"[a-z][a-z0-9]*(_[0-9a-zA-Z]+)*")


def _mapped_ranges(lib: str) -> list[tuple[int, int]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            if lib in line:
                lo, hi = line.split()[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


class LayoutError(GgcError):
    pass


def verify_layout(g: Ggml) -> None:
    """Build real tensors with known fields and check that our struct reads them back exactly."""
    overhead = g.base.ggml_tensor_overhead()
    if overhead != GGML_OBJECT_SIZE + C.sizeof(GgmlTensor):
        raise LayoutError(
            f"ggml_tensor layout mismatch: the library's tensor overhead is {overhead} bytes, "
            f"ggc expects {GGML_OBJECT_SIZE + C.sizeof(GgmlTensor)}; this ggml version is not supported"
        )
    ctx = g.new_context(1 << 20, no_alloc=False)
    try:
        f32 = g.type_num["f32"]
        ne = (C.c_int64 * 4)(8, 3, 2, 1)
        a = g.base.ggml_new_tensor(ctx, f32, 4, ne)
        b = g.base.ggml_new_tensor(ctx, f32, 4, ne)
        g.base.ggml_set_name(a, b"probe_a")
        g.base.ggml_set_input(a)
        s = g.base.ggml_scale(ctx, g.base.ggml_add(ctx, a, b), C.c_float(0.5))
        v = g.base.ggml_view_2d(ctx, a, 4, 2, 32, 12)
        ta, ts, tv = g.tensor(a), g.tensor(s), g.tensor(v)
        add = ts.src[0]
        checks = [
            ("type", ta.type == f32),
            ("ne", list(ta.ne) == [8, 3, 2, 1]),
            ("nb", list(ta.nb) == [4, 32, 96, 192]),
            ("name", ta.name == b"probe_a"),
            ("flags", ta.flags & 1 == 1),
            ("data", ta.data == g.base.ggml_get_data(a)),
            ("op", g.op_names[ts.op] == "SCALE" and g.op_names[g.tensor(add).op] == "ADD"),
            ("src", list(g.tensor(add).src[:2]) == [a, b]),
            ("op_params", ta.op_params[0] == 0 and C.c_float.from_buffer_copy(ts.op_params, 0).value == 0.5),
            ("view_src", tv.view_src == a and tv.view_offs == 12),
            ("view_data", tv.data == ta.data + 12),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise LayoutError(f"ggml_tensor layout mismatch in field(s) {', '.join(bad)}: unsupported ggml version")
        gr = g.base.ggml_new_graph_custom(ctx, 16, False)
        g.base.ggml_build_forward_expand(gr, s)
        head = GgmlCgraphHead.from_address(gr)
        nodes = g.base.ggml_graph_nodes(gr)
        if (head.size != g.base.ggml_graph_size(gr) or head.n_nodes != g.base.ggml_graph_n_nodes(gr)
                or C.cast(head.nodes, C.c_void_p).value != nodes or head.n_leafs != 2
                or {head.leafs[0], head.leafs[1]} != {a, b}):
            raise LayoutError("ggml_cgraph layout mismatch: unsupported ggml version")
    finally:
        g.base.ggml_free(ctx)


@functools.lru_cache(maxsize=1)
def load() -> Ggml:
    return Ggml()
