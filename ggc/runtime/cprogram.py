"""Build a generated C program and drive it through its C API with ctypes."""

from __future__ import annotations

import ctypes as C
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..backends.c.emit import CompiledC
from ..errors import GgcError
from ..ir.graph import Tensor
from .ranks import mpicc


def build(compiled: CompiledC, target: str = "libmodel.so", openmp: bool = False, nccl: bool | None = None) -> Path:
    """Run make in the program directory; a compiler error becomes a GgcError with its output.
    nccl: build a CUDA program with NCCL (None: when it has several ranks)."""
    if shutil.which("make") is None:
        raise GgcError("'make' not found: install make and a C compiler (gcc)")
    cuda = (compiled.out / "program.cu").exists()
    if compiled.ranks > 1 and not cuda:  # tensor-parallel C: MPI's compiler wrapper (and then mpirun)
        cc, mpi = mpicc(), ["MPI=1"]
    else:
        cc, mpi = os.environ.get("CC", "gcc"), []
        if shutil.which(cc) is None:
            raise GgcError(f"C compiler '{cc}' not found: install gcc or set CC")
    args = ["make", "-s", f"-j{os.cpu_count() or 1}", target, f"CC={cc}", *mpi] + (["OPENMP=1"] if openmp else [])
    if cuda:
        if shutil.which(os.environ.get("NVCC", "nvcc")) is None:
            raise GgcError("nvcc not found: install the CUDA toolkit (or use --target c)")
        from ..backends.cuda.abi import arch, build_library

        # link the kernel library built (and cached) once, instead of compiling every kernel per program
        args += [f"ARCH={arch().removeprefix('sm_')}", f"KERNELS={build_library()}"]
        if compiled.ranks > 1 if nccl is None else nccl:
            args += _nccl_args()
    r = subprocess.run(args, cwd=compiled.out, capture_output=True, text=True)
    if r.returncode != 0:
        raise GgcError(f"building {compiled.out} failed:\n{r.stdout}{r.stderr}")
    return compiled.out / target


def _nccl_args() -> list[str]:
    """make's arguments for NCCL (a CUDA program of several ranks), or a GgcError saying how to get it."""
    from ..backends.cuda.abi import find_nccl

    home = find_nccl()
    if home is None and not Path("/usr/include/nccl.h").is_file():
        raise GgcError("NCCL not found, which a CUDA program of several ranks needs: pip install nvidia-nccl-cu13 "
                       "(or set NCCL_HOME to a folder with include/nccl.h and lib/libnccl.so.2)")
    return ["NCCL=1", f"NCCL_HOME={home or ''}"]


class CProgram:
    """A built program, loaded: an arena, weights, and kernel groups to run."""

    def __init__(self, compiled: CompiledC, openmp: bool = False) -> None:
        self.compiled = compiled
        self.plans = compiled.plans
        self.plan = compiled.plan
        lib_path = build(compiled, openmp=openmp)
        self.lib = C.CDLL(str(lib_path.resolve()))
        L = self.lib
        L.ggc_model_create.restype = C.c_void_p
        L.ggc_model_free.argtypes = [C.c_void_p]
        L.ggc_model_load_weights.argtypes = [C.c_void_p, C.c_char_p, C.c_char_p, C.c_size_t]
        L.ggc_model_run_graph.argtypes = [C.c_void_p, C.c_int]
        L.ggc_model_run_group.argtypes = [C.c_void_p, C.c_int, C.c_int]
        L.ggc_model_write.argtypes = [C.c_void_p, C.c_size_t, C.c_void_p, C.c_size_t]
        L.ggc_model_read.argtypes = [C.c_void_p, C.c_size_t, C.c_void_p, C.c_size_t]
        L.ggc_model_argmax.argtypes = [C.c_void_p, C.c_size_t, C.c_int64, C.POINTER(C.c_int64)]
        L.ggc_model_run_graph_argmax.argtypes = [C.c_void_p, C.c_int, C.c_size_t, C.c_int64, C.POINTER(C.c_int64)]
        L.ggc_model_queue_graph_argmax.argtypes = [C.c_void_p, C.c_int, C.c_size_t, C.c_int64, C.c_size_t]
        L.ggc_model_argmax_result.argtypes = [C.c_void_p, C.POINTER(C.c_int64)]
        L.ggc_model_error.restype = C.c_char_p
        L.ggc_model_error.argtypes = [C.c_void_p]
        L.ggc_last_error.restype = C.c_char_p
        L.ggc_model_set_n_kv.argtypes = [C.c_void_p, C.c_int64]
        L.ggc_model_arena_size.restype = C.c_size_t
        L.ggc_model_reset_state.argtypes = [C.c_void_p]
        L.ggc_model_set_threads.argtypes = [C.c_void_p, C.c_int]
        L.ggc_model_set_threads.restype = C.c_int
        L.ggc_model_last_run_ms.restype, L.ggc_model_last_run_ms.argtypes = C.c_double, [C.c_void_p]
        L.ggc_model_profile_graph.argtypes = [C.c_void_p, C.c_int, C.POINTER(C.c_float)]
        L.ggc_model_rank.argtypes = [C.c_void_p]
        if L.ggc_model_arena_size() != self.plan.size:
            raise GgcError(f"{lib_path}: the built program does not match its plan")
        self.m = L.ggc_model_create()
        if not self.m:
            why = L.ggc_last_error().decode(errors="replace")
            raise GgcError(f"could not create the program ({why})"
                           + (f"; its arena needs {self.plan.size} bytes" if why == "out of memory" else ""))

    @property
    def rank(self) -> int:
        """This process's rank in a tensor-parallel program (run under mpirun, ranks.py); 0 otherwise."""
        return int(self.lib.ggc_model_rank(self.m))

    def close(self) -> None:
        if getattr(self, "m", None):
            self.lib.ggc_model_free(self.m)
            self.m = None

    def __enter__(self) -> CProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load_weights(self, gguf: str | Path) -> None:
        err = C.create_string_buffer(1024)
        if self.lib.ggc_model_load_weights(self.m, str(gguf).encode(), err, len(err)) != 0:
            raise GgcError(err.value.decode(errors="replace"))

    def set_threads(self, n: int) -> None:
        if self.lib.ggc_model_set_threads(self.m, n) != 0:
            raise GgcError(f"out of memory for kernel work memory with {n} threads")

    def set(self, t: Tensor, data: bytes, graph: int = 0) -> None:
        """Write a tensor's bytes (its span from the first element, strides as in the graph)."""
        if len(data) != t.nbytes:
            raise GgcError(f"{t.label()}: {len(data)} bytes given, the tensor spans {t.nbytes}")
        if self.lib.ggc_model_write(self.m, self.plans[graph].offset_of(t), data, len(data)) != 0:
            raise GgcError(f"{t.label()}: writing into the arena failed")

    def input_block(self, graph: int, arrays: dict[int, np.dtype]) -> InputBlock:
        """Host arrays for these inputs (tensor id -> element type) that one write() copies in: views
        of one buffer laid out as their span of the arena when they sit together in the io region.
        Make one per graph and reuse it: a decode step then allocates nothing."""
        return InputBlock(self, graph, {self.plans[graph].graph.tensors[i]: dt for i, dt in arrays.items()})

    def _input_span(self, graph: int, ids: frozenset[int]) -> tuple[int, int] | None:
        """[lo, hi) of the arena that these inputs fill, when it is inside the io region and holds
        no other buffer; None otherwise (or for a single input)."""
        p = self.plans[graph]
        if len(ids) < 2:
            return None
        ts = [p.graph.tensors[i] for i in ids]
        lo = min(p.offset_of(t) for t in ts)
        hi = max(p.offset_of(t) + t.nbytes for t in ts)
        io = p.region_offset["io"]
        if lo < io or hi > io + p.region_size["io"]:
            return None
        others = any(b.region == "io" and b.tensor.id not in ids and io + b.offset < hi and io + b.offset + b.size > lo
                     for b in p.buffers.values())
        return None if others else (lo, hi)

    def get(self, t: Tensor, graph: int = 0) -> bytes:
        buf = C.create_string_buffer(t.nbytes)
        if self.lib.ggc_model_read(self.m, self.plans[graph].offset_of(t), buf, t.nbytes) != 0:
            raise GgcError(f"{t.label()}: reading from the arena failed")
        return buf.raw

    def get_f32(self, t: Tensor, graph: int = 0) -> np.ndarray:
        """An f32 tensor's values, read straight into a new array (no intermediate bytes: the logits
        of a 128k vocabulary are read every decode step)."""
        if t.type.name != "f32":
            raise GgcError(f"{t.label()}: get_f32 of a {t.type.name} tensor")
        out = np.empty(t.nbytes // 4, dtype=np.float32)
        if self.lib.ggc_model_read(self.m, self.plans[graph].offset_of(t), out.ctypes.data_as(C.c_void_p),
                                   t.nbytes) != 0:
            raise GgcError(f"{t.label()}: reading from the arena failed")
        return out

    def argmax(self, t: Tensor, graph: int = 0, run: bool = False) -> int:
        """The index of an f32 tensor's largest value (the first of equal ones), found where the
        tensor lives: greedy decoding reads back one index instead of a vocabulary of logits.
        run: run the graph first, in the same call (one wait for the device)."""
        out, off = C.c_int64(), self._argmax_offset(t, graph)
        if run:
            self._check(self.lib.ggc_model_run_graph_argmax(self.m, graph, off, t.nelements, C.byref(out)))
        else:
            self._check(self.lib.ggc_model_argmax(self.m, off, t.nelements, C.byref(out)))
        return out.value

    def queue_argmax(self, t: Tensor, graph: int = 0, feed: Tensor | None = None) -> None:
        """Queue a run of the graph and the argmax of t without waiting (argmax_result collects it, in
        order). feed: the graph's i32 token input, which takes the argmax queued before this one on the
        device, so that greedy decoding queues step k + 1 while step k runs."""
        if feed is not None and (feed.type.name != "i32" or feed.nelements != 1):
            raise GgcError(f"{feed.label()}: the fed token input must be one i32")
        off = self._argmax_offset(t, graph)
        where = self.plans[graph].offset_of(feed) if feed is not None else C.c_size_t(-1).value
        self._check(self.lib.ggc_model_queue_graph_argmax(self.m, graph, off, t.nelements, where))

    def _argmax_offset(self, t: Tensor, graph: int) -> int:
        """Where t is, for the argmax functions (f32, contiguous only)."""
        if t.type.name != "f32" or not t.is_contiguous():
            raise GgcError(f"{t.label()}: argmax of a {t.type.name} tensor (f32, contiguous only)")
        return self.plans[graph].offset_of(t)

    def argmax_result(self) -> int:
        """The index of the oldest queued argmax (waits for its run)."""
        out = C.c_int64()
        self._check(self.lib.ggc_model_argmax_result(self.m, C.byref(out)))
        return out.value

    def set_n_kv(self, n_kv: int) -> None:
        self.lib.ggc_model_set_n_kv(self.m, n_kv)

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise GgcError(f"the program failed: {self.lib.ggc_model_error(self.m).decode(errors='replace')}")

    def reset_state(self) -> None:
        """Zero the KV cache."""
        self.lib.ggc_model_reset_state(self.m)

    def run(self, graph: int = 0) -> None:
        self._check(self.lib.ggc_model_run_graph(self.m, graph))

    def last_run_ms(self) -> float:
        """Device time of the last run(), in ms (CUDA events on the CUDA target)."""
        return float(self.lib.ggc_model_last_run_ms(self.m))

    def profile(self, graph: int = 0) -> list[float]:
        """Run a graph's kernel groups one by one; the time each took, in ms."""
        n = len(self.plans[graph].groups)
        ms = (C.c_float * max(n, 1))()
        self._check(self.lib.ggc_model_profile_graph(self.m, graph, ms))
        return list(ms[:n])

    def run_group(self, g: int, graph: int = 0) -> None:
        self._check(self.lib.ggc_model_run_group(self.m, graph, g))


class InputBlock:
    """Typed host arrays for some inputs of one graph (CProgram.input_block), written with one copy."""

    def __init__(self, prog: CProgram, graph: int, dtypes: dict[Tensor, np.dtype]) -> None:
        self.prog, self.graph = prog, graph
        p = prog.plans[graph]
        self.span = prog._input_span(graph, frozenset(t.id for t in dtypes))
        self.buf = np.zeros(self.span[1] - self.span[0] if self.span else 0, np.uint8)
        self.tensors = list(dtypes)
        self.arrays: dict[int, np.ndarray] = {}
        for t, dt in dtypes.items():
            if np.dtype(dt).itemsize * t.nelements != t.nbytes:
                raise GgcError(f"{t.label()}: {t.nbytes} bytes are not {t.nelements} {np.dtype(dt).name}")
            if self.span:
                off = p.offset_of(t) - self.span[0]
                self.arrays[t.id] = self.buf[off : off + t.nbytes].view(dt)
            else:
                self.arrays[t.id] = np.zeros(t.nelements, dt)

    def write(self) -> None:
        """Copy the arrays into the arena (in stream order on the GPU: the next run sees them)."""
        if self.span:
            if self.prog.lib.ggc_model_write(self.prog.m, self.span[0], self.buf.ctypes.data_as(C.c_void_p),
                                             self.buf.nbytes) != 0:
                raise GgcError("writing the inputs into the arena failed")
            return
        for t in self.tensors:
            self.prog.set(t, self.arrays[t.id].tobytes(), self.graph)
