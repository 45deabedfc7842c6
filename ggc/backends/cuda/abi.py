"""The CUDA kernel library seen from Python: build, GPU presence, and single-node runs.

Mirrors ggc/backends/c/abi.py. The kernel library (kernels/*.cu, with the C ABI header ggc.h of
the C backend) is compiled once with nvcc into a shared library, cached by content hash under
~/.cache/ggc/cuda (or $GGC_CACHE/cuda). Kernels are ``ggc_cuda_op_<op>(const ggc_node *, const
ggc_cuda_ctx *)`` on device pointers; the harness (kernels/ggc_cuda_harness.cu) copies a node's
host bytes to the device, runs the kernel and copies the destination back, so kernels can be
checked against ggml one node at a time.

Environment: GGC_CUDA_ARCH (default: the GPU's own, else sm_90) picks the target, e.g. sm_80; NVCC the compiler.
"""

from __future__ import annotations

import ctypes as C
import functools
import hashlib
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ...errors import GgcError
from ...ir.graph import Tensor
from ..c.abi import C_TYPES, MAX_SRC, CNode, host_node
from ..c.abi import KERNEL_DIR as C_KERNEL_DIR
from ..c.abi import kernel_name as c_kernel_name

KERNEL_DIR = Path(__file__).parent / "kernels"
DEFAULT_ARCH = "sm_90"
NVCC_FLAGS = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC"]

__all__ = ["KERNEL_DIR", "build_library", "find_nccl", "find_nvcc", "has_gpu", "kernel_name", "load_library",
           "run_node", "device_name", "C_TYPES", "MAX_SRC"]


def kernel_name(t: Tensor) -> str:
    """The CUDA function that computes this node: the C backend's name (ggc_op_<op>, ggc_op_unary_<op>,
    ...) with the ggc_cuda_ prefix."""
    return "ggc_cuda_" + c_kernel_name(t).removeprefix("ggc_")


def work_name(t: Tensor) -> str:
    return f"ggc_cuda_work_{t.op.lower()}"


def find_nvcc() -> str | None:
    """nvcc from $NVCC, PATH, $CUDA_HOME or /usr/local/cuda."""
    cand = [os.environ.get("NVCC", ""), shutil.which("nvcc") or ""]
    for home in (os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"):
        if home:
            cand.append(str(Path(home) / "bin" / "nvcc"))
    for c in cand:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def find_nccl() -> str | None:
    """The folder holding include/nccl.h and lib/libnccl.so.2, for programs of several ranks: $NCCL_HOME,
    pip's nvidia-nccl-cu13 package (nvidia/nccl in any folder of sys.path), $CUDA_HOME or /usr/local/cuda;
    None if none does (an NCCL on the compiler's own paths, as Debian's libnccl-dev installs it, still builds)."""
    import sys

    cand = [os.environ.get("NCCL_HOME", "")]
    cand += [str(Path(d) / "nvidia" / "nccl") for d in sys.path if d]
    cand += [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    for c in cand:
        if c and (Path(c) / "include" / "nccl.h").is_file() and (Path(c) / "lib" / "libnccl.so.2").exists():
            return str(Path(c).resolve())
    return None


def kernel_sources() -> list[Path]:
    return sorted(KERNEL_DIR.glob("*.cu"))


@functools.lru_cache(maxsize=1)
def driver_devices() -> list[tuple[str, int, int]]:
    """(name, major, minor) of each GPU that the CUDA driver sees; [] without a driver or a GPU.

    Asks libcuda directly, so that finding no GPU costs neither nvcc nor a kernel build."""
    try:
        cu = C.CDLL("libcuda.so.1")
    except OSError:
        return []
    n = C.c_int(0)
    if cu.cuInit(0) != 0 or cu.cuDeviceGetCount(C.byref(n)) != 0:
        return []
    out = []
    for i in range(n.value):
        dev, major, minor = C.c_int(0), C.c_int(0), C.c_int(0)
        name = C.create_string_buffer(256)
        if cu.cuDeviceGet(C.byref(dev), i) != 0:
            continue
        cu.cuDeviceGetName(name, len(name), dev)
        cu.cuDeviceGetAttribute(C.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        cu.cuDeviceGetAttribute(C.byref(minor), 76, dev)  # ..._MINOR
        out.append((name.value.decode(errors="replace"), major.value, minor.value))
    return out


def arch() -> str:
    """The target: $GGC_CUDA_ARCH, else the first GPU's compute capability, else sm_90."""
    if os.environ.get("GGC_CUDA_ARCH"):
        return os.environ["GGC_CUDA_ARCH"]
    devs = driver_devices()
    return f"sm_{devs[0][1]}{devs[0][2]}" if devs else DEFAULT_ARCH


def _arch_flags(a: str) -> list[str]:
    # sm_90a and friends need the -gencode form (see the Hopper notes); sm_XY takes -arch
    if a.endswith("a"):
        num = a.removeprefix("sm_")
        return [f"-gencode=arch=compute_{num},code=sm_{num}"]
    return [f"-arch={a}"]


def build_library(cache_dir: Path | None = None, jobs: int | None = None) -> Path:
    """Compile every kernels/*.cu (each to an object, in parallel) and link one shared library,
    once per content, flags and target."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise GgcError("no CUDA compiler found (install the CUDA toolkit, or set NVCC)")
    sources = kernel_sources()
    flags = [*NVCC_FLAGS, *_arch_flags(arch()), "-I", str(KERNEL_DIR), "-I", str(C_KERNEL_DIR)]
    h = hashlib.sha256(" ".join([*NVCC_FLAGS, *_arch_flags(arch())]).encode())
    for d in (KERNEL_DIR, C_KERNEL_DIR):
        for p in sorted(d.iterdir()):
            if p.suffix in (".cu", ".cuh", ".h"):
                h.update(p.name.encode() + b"\0" + p.read_bytes())
    cache = cache_dir or Path(os.environ.get("GGC_CACHE", Path.home() / ".cache" / "ggc")) / "cuda"
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"libggc_cuda-{arch()}-{h.hexdigest()[:16]}.so"
    if out.exists():
        return out
    tmpdir = cache / f"build-{h.hexdigest()[:16]}-{os.getpid()}"
    tmpdir.mkdir(parents=True, exist_ok=True)
    try:
        def compile_one(src: Path) -> tuple[Path, subprocess.CompletedProcess]:
            obj = tmpdir / (src.stem + ".o")
            r = subprocess.run([nvcc, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
            return obj, r

        workers = jobs or max(1, min(len(sources), os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as ex:
            results = list(ex.map(compile_one, sources))
        errors = [f"{src.name}:\n{r.stderr}" for src, (_, r) in zip(sources, results) if r.returncode != 0]
        if errors:
            raise GgcError("compiling the CUDA kernels failed:\n" + "\n".join(errors))
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        r = subprocess.run([nvcc, *_arch_flags(arch()), "-shared", *[str(o) for o, _ in results], "-o", str(tmp)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise GgcError(f"linking the CUDA kernels failed:\n{r.stderr}")
        tmp.replace(out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


_LIBS: dict[Path, C.CDLL] = {}

OP_FN = C.CFUNCTYPE(None, C.c_void_p, C.c_void_p)


def load_library() -> C.CDLL:
    path = build_library()
    if path not in _LIBS:
        lib = C.CDLL(str(path))
        lib.ggc_cuda_device_count.restype = C.c_int
        lib.ggc_cuda_device_name.argtypes = [C.c_char_p, C.c_size_t]
        lib.ggc_cuda_run_node.restype = C.c_int
        lib.ggc_cuda_run_node.argtypes = [C.c_void_p, C.c_void_p, C.POINTER(CNode), C.POINTER(C.c_size_t),
                                          C.c_size_t, C.c_char_p, C.c_size_t, C.c_int64]
        lib.ggc_cuda_run_node_quant_out.restype = C.c_int
        lib.ggc_cuda_run_node_quant_out.argtypes = [C.c_void_p, C.c_void_p, C.POINTER(CNode), C.POINTER(C.c_size_t),
                                                    C.c_size_t, C.c_char_p, C.c_size_t, C.c_int64, C.c_void_p,
                                                    C.c_size_t]
        lib.ggc_cuda_bench_node.restype = C.c_int
        lib.ggc_cuda_bench_node.argtypes = [C.c_void_p, C.c_void_p, C.POINTER(CNode), C.POINTER(C.c_size_t),
                                            C.c_size_t, C.c_int, C.c_int, C.POINTER(C.c_float), C.c_char_p,
                                            C.c_size_t]
        _LIBS[path] = lib
    return _LIBS[path]


def has_gpu() -> bool:
    """True when the library builds, loads, and the CUDA runtime sees at least one device."""
    try:
        return load_library().ggc_cuda_device_count() > 0
    except (GgcError, OSError):
        return False


def device_name() -> str:
    buf = C.create_string_buffer(256)
    load_library().ggc_cuda_device_name(buf, len(buf))
    return buf.value.decode()


GGC_TYPE_Q4_0R8 = 32  # ggc.h: q4_0 regrouped by 8 blocks, a layout of GPU programs only
GGC_TYPE_Q6_KR8 = 33  # ggc.h: q6_K regrouped by 8 blocks, for one-column products of GPU programs


def regroup_q4_0(data: bytes) -> bytes:
    """q4_0 blocks (18 bytes: f16 scale, 16 quant bytes) regrouped as the GGUF loader does for GPU
    programs (ggc_gguf.c regroup_q4_0): each 8 blocks become their 8 scales, then their 8 x 16
    quant bytes. len(data) must be a multiple of 144."""
    if len(data) % 144:
        raise GgcError(f"q4_0 regrouping needs whole groups of 8 blocks (144 bytes), got {len(data)} bytes")
    g = np.frombuffer(data, np.uint8).reshape(-1, 8, 18)
    return np.concatenate([g[:, :, :2].reshape(-1, 16), g[:, :, 2:].reshape(-1, 128)], axis=1).tobytes()


def regroup_q6_k(data: bytes) -> bytes:
    """q6_K blocks (210 bytes: ql[128], qh[64], scales[16], f16 d) regrouped as the GGUF loader does for
    one-column products of GPU programs (ggc_gguf.c regroup_q6_k): each 8 blocks become their 8 ql,
    then their 8 qh, 8 scales and 8 d. len(data) must be a multiple of 1680."""
    if len(data) % 1680:
        raise GgcError(f"q6_K regrouping needs whole groups of 8 blocks (1680 bytes), got {len(data)} bytes")
    g = np.frombuffer(data, np.uint8).reshape(-1, 8, 210)
    parts = [g[:, :, :128], g[:, :, 128:192], g[:, :, 192:208], g[:, :, 208:]]
    return np.concatenate([x.reshape(len(g), -1) for x in parts], axis=1).tobytes()


REGROUPED = {"q4_0": (256, regroup_q4_0, GGC_TYPE_Q4_0R8), "q6_K": (2048, regroup_q6_k, GGC_TYPE_Q6_KR8)}


def _launch(t: Tensor, src_data: list[bytes | None], dst_init: bytes | None, lib: C.CDLL | None, n_kv: int,
            bench: tuple[int, int] | None, regroup: bool = False, work_out: C.Array | None = None
            ) -> tuple[bytes, float]:
    lib = lib or load_library()
    name = kernel_name(t)
    fn = getattr(lib, name, None)
    if fn is None:
        raise GgcError(f"{t.label()}: the CUDA backend has no kernel {name}")
    work = getattr(lib, work_name(t), None)
    layout = None
    if regroup:  # src0 as a GPU program holds a q4_0 or q6_K weight of whole 8-block groups a row
        w = t.src[0]
        group, regroup_fn, layout = REGROUPED.get(w.type.name, (0, None, None))
        if regroup_fn is None or w.ne[0] % group or w.nb[1] != w.type.row_size(w.ne[0]):
            raise GgcError(f"{t.label()}: only contiguous q4_0 or q6_K rows of whole 8-block groups are regrouped")
        src_data = [regroup_fn(src_data[0][: w.nbytes]), *src_data[1:]]  # type: ignore[index]
    node, dst, bufs = host_node(t, src_data, dst_init)
    if layout is not None:
        node.src[0].type = layout
    sizes = (C.c_size_t * MAX_SRC)(*[len(bufs[j]) if j in bufs else 0 for j in range(MAX_SRC)])
    err = C.create_string_buffer(512)
    fn_ptr = C.cast(fn, C.c_void_p)
    work_ptr = C.cast(work, C.c_void_p) if work is not None else None
    ms = C.c_float(0.0)
    if work_out is not None:
        rc = lib.ggc_cuda_run_node_quant_out(fn_ptr, work_ptr, C.byref(node), sizes, t.nbytes, err, len(err), n_kv,
                                             work_out, len(work_out))
    elif bench is None:
        rc = lib.ggc_cuda_run_node(fn_ptr, work_ptr, C.byref(node), sizes, t.nbytes, err, len(err), n_kv)
    else:
        rc = lib.ggc_cuda_bench_node(fn_ptr, work_ptr, C.byref(node), sizes, t.nbytes, bench[0], bench[1],
                                     C.byref(ms), err, len(err))
    if rc != 0:
        raise GgcError(f"{t.label()}: {name} failed on the GPU ({rc}): {err.value.decode(errors='replace')}")
    return dst.raw, ms.value


def run_node(t: Tensor, src_data: list[bytes | None], dst_init: bytes | None = None,
             lib: C.CDLL | None = None, n_kv: int = 0, regroup: bool = False) -> bytes:
    """Run the CUDA kernel for node t on these source bytes (each the span of its source from its
    first element); dst_init is what the destination memory held before (it matters for writes
    into views). n_kv: the KV cells attention reads (ctx.n_kv, as given: no rounding); 0 = all.
    regroup: a q4_0 or q6_K src0 goes in as GPU programs keep it (GGC_TYPE_Q4_0R8, GGC_TYPE_Q6_KR8).
    Returns the destination's bytes."""
    return _launch(t, src_data, dst_init, lib, n_kv, None, regroup)[0]


def run_node_quant_out(t: Tensor, src_data: list[bytes | None], dst_init: bytes | None = None, n_kv: int = 0,
                       k: int = 0) -> tuple[bytes, bytes]:
    """run_node with the context's quant_out set, for an op that also leaves its one output row of k
    elements as the next product's q8a activations in the work buffer: (the destination's bytes, the
    work buffer's first k quant bytes then k / 32 16-byte metas)."""
    work = C.create_string_buffer(k + k // 32 * 16)
    dst, _ = _launch(t, src_data, dst_init, None, n_kv, None, work_out=work)
    return dst, work.raw


def bench_node(t: Tensor, src_data: list[bytes | None], warmup: int = 10, iters: int = 100,
               regroup: bool = False) -> float:
    """Mean milliseconds of node t's kernel over `iters` back-to-back runs on the GPU (CUDA events)."""
    return _launch(t, src_data, None, None, 0, (warmup, iters), regroup)[1]
