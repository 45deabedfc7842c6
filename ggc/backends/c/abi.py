"""The C kernel ABI seen from Python: ggc_tensor/ggc_node mirrors, names, and single-node runs.

The kernel library (kernels/*.c) is built once into a shared library, cached by content hash,
so kernels can be unit-tested against ggml one node at a time, exactly as the generated program
calls them.
"""

from __future__ import annotations

import ctypes as C
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from ...errors import GgcError
from ...ir import params as prm
from ...ir.graph import Tensor

KERNEL_DIR = Path(__file__).parent / "kernels"
MAX_SRC = 10

# ggc_type in kernels/ggc.h, in order (ggc's own numbering, not ggml's).
C_TYPES = ["f32", "f16", "bf16", "i8", "i16", "i32", "i64", "f64", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0",
           "q8_1", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K"]


def c_type_name(type_name: str) -> str:
    """The C enumerator for a ggml type name: q4_K -> GGC_TYPE_Q4_K."""
    if type_name not in C_TYPES:
        raise GgcError(f"the C backend has no type {type_name}")
    return "GGC_TYPE_" + type_name.upper()


def kernel_name(t: Tensor) -> str:
    """The C function that computes this node: ggc_op_<op>, or ggc_op_unary_<op> / ggc_op_glu_<op>."""
    if t.op in ("UNARY", "GLU"):
        return f"ggc_op_{t.op.lower()}_{str(t.params['op']).lower()}"
    return f"ggc_op_{t.op.lower()}"


class CTensor(C.Structure):
    _fields_ = [("data", C.c_void_p), ("type", C.c_int), ("ne", C.c_int64 * 4), ("nb", C.c_size_t * 4)]


class CNode(C.Structure):
    _fields_ = [("dst", CTensor), ("src", CTensor * MAX_SRC), ("op_params", C.c_int32 * 16)]


class CWork(C.Structure):
    _fields_ = [("data", C.c_void_p), ("size", C.c_size_t), ("n_threads", C.c_int), ("n_kv", C.c_int64)]


def op_param_words(t: Tensor) -> list[int]:
    """op_params as the kernels see them: ggml's words, with unary/glu enums left out (the kernel is per op)."""
    return prm.encode(t.opdef, t.params, t.raw, lambda kind, name: 0)


def kernel_sources() -> list[Path]:
    return sorted(KERNEL_DIR.glob("*.c"))


def build_library(cache_dir: Path | None = None, openmp: bool = False) -> Path:
    """Compile the kernel library into a shared object, once per content (and flags)."""
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if cc is None:
        raise GgcError("no C compiler found (set CC, or install gcc)")
    sources = kernel_sources()
    flags = ["-O2", "-std=c11", "-ffp-contract=off", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
             "-Wno-unknown-pragmas"]
    flags += ["-fopenmp"] if openmp else []
    h = hashlib.sha256(" ".join(flags).encode())
    for p in sorted(KERNEL_DIR.iterdir()):
        if p.suffix in (".c", ".h"):
            h.update(p.name.encode() + p.read_bytes())
    cache = cache_dir or Path(os.environ.get("GGC_CACHE", Path.home() / ".cache" / "ggc")) / "ckernels"
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"libggc_kernels-{h.hexdigest()[:16]}.so"
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        r = subprocess.run([cc, *flags, "-I", str(KERNEL_DIR), *map(str, sources), "-o", str(tmp), "-lm"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise GgcError(f"compiling the C kernels failed:\n{r.stderr}")
        tmp.replace(out)
    return out


_LIBS: dict[Path, C.CDLL] = {}


def load_library() -> C.CDLL:
    path = build_library()
    if path not in _LIBS:
        _LIBS[path] = C.CDLL(str(path))
    return _LIBS[path]


def _fill(ct: CTensor, t: Tensor, buf: C.Array | None) -> None:
    ct.data = C.cast(buf, C.c_void_p) if buf is not None else None
    ct.type = C_TYPES.index(t.type.name)
    for i in range(4):
        ct.ne[i] = t.ne[i]
        ct.nb[i] = t.nb[i]


def host_node(t: Tensor, src_data: list[bytes | None],
              dst_init: bytes | None = None) -> tuple[CNode, C.Array, dict[int, C.Array]]:
    """A ggc_node over host buffers: the sources' bytes and what the destination held before.
    Returns the node, the destination buffer and the source buffers by slot (keep them alive)."""
    node = CNode()
    bufs: dict[int, C.Array] = {}
    for j, s in enumerate(t.src):
        if s is None:
            continue
        data = src_data[j]
        if data is None or len(data) < s.nbytes:
            raise GgcError(f"{t.label()}: source {j} needs {s.nbytes} bytes")
        bufs[j] = C.create_string_buffer(data, len(data))
        _fill(node.src[j], s, bufs[j])
    dst = C.create_string_buffer(dst_init if dst_init is not None else b"\xa5" * t.nbytes, t.nbytes)
    _fill(node.dst, t, dst)
    for i, w in enumerate(op_param_words(t)):
        node.op_params[i] = prm.i32_from_word(w)
    return node, dst, bufs


def run_node(t: Tensor, src_data: list[bytes | None], dst_init: bytes | None = None,
             lib: C.CDLL | None = None, n_threads: int = 1, n_kv: int = 0) -> bytes:
    """Run the kernel for node t on these source bytes (each the span of its source from its first
    element); dst_init is what the destination memory held before (it matters for writes into views).
    n_kv: the KV cells attention reads (work->n_kv, as given: no rounding); 0 = all."""
    lib = lib or load_library()
    fn = getattr(lib, kernel_name(t), None)
    if fn is None:
        raise GgcError(f"{t.label()}: the C backend has no kernel {kernel_name(t)}")
    node, dst, _bufs = host_node(t, src_data, dst_init)
    work_fn = getattr(lib, "ggc_work_" + t.op.lower(), None)
    size = 0
    if work_fn is not None:
        work_fn.restype = C.c_size_t
        size = work_fn(C.byref(node))
    work_buf = C.create_string_buffer(max(size * n_threads, 1))
    work = CWork(C.cast(work_buf, C.c_void_p), size * n_threads, n_threads, n_kv)
    fn.restype = None
    fn(C.byref(node), C.byref(work))
    return dst.raw
