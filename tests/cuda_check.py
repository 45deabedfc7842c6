"""Check CUDA kernels one node at a time against ggml, as test-backend-ops does.

Like tests/kernel_check.py, through the CUDA harness (ggc/backends/cuda/abi.py): build a graph
with the real ggml C API, compute it in ggml (CPU), then run the CUDA kernel of every non-view
node on ggml's own values for that node's sources and compare with ggml's value of the node
(NMSE under test-backend-ops' threshold for the op).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ggc.backends.cuda import abi as cuda
from ggc.capture.builder import GraphBuilder, Ref
from ggc.oracle.compare import NodeResult, compare
from tests.kernel_check import node_inputs

_GPU: tuple[bool, str] | None = None


def gpu_status() -> tuple[bool, str]:
    """(usable, reason): whether CUDA node checks can run here, and why not."""
    global _GPU
    if _GPU is None:
        if cuda.find_nvcc() is None:
            _GPU = (False, "nvcc not found (install the CUDA toolkit or set NVCC)")
        elif not cuda.driver_devices():  # before building the kernel library, which takes minutes
            _GPU = (False, "the CUDA driver sees no GPU")
        else:
            try:
                lib = cuda.load_library()
            except Exception as e:  # a build failure is reported by the build test, not here
                _GPU = (False, f"the CUDA library did not build or load: {e}")
            else:
                n = lib.ggc_cuda_device_count()
                _GPU = (True, cuda.device_name()) if n > 0 else (False, "the CUDA runtime sees no device")
    return _GPU


def require_gpu() -> None:
    ok, why = gpu_status()
    if not ok:
        pytest.skip(f"no CUDA GPU: {why}")


def check(build: Callable[[GraphBuilder], Ref], ops: tuple[str, ...] | None = None,
          regroup: bool = False) -> list[NodeResult]:
    """Every kernel node of the graph (or only those of the given ops) through the CUDA harness;
    regroup: MUL_MAT weights as GPU programs keep q4_0 (regrouped by 8 blocks)."""
    with GraphBuilder() as b:
        out = build(b)
        graph, live = b.capture_live(out)
        values = b.compute()
        leaf = {i: b.data.get(p, bytes(graph.tensors[i].nbytes)) for i, p in enumerate(live.ptrs[: live.n_leafs])}
    results = []
    for t in graph.nodes:
        if t.opdef.view and t.op not in ("CPY", "SET_ROWS"):
            continue  # views are offsets and strides, not kernels
        if ops is not None and t.op not in ops:
            continue
        srcs, dst_init = node_inputs(graph, values, leaf, t)
        got = cuda.run_node(t, srcs, dst_init, regroup=regroup and t.op == "MUL_MAT")
        results.append(compare(t, values[t.id], got))
    return results


def assert_ok(build: Callable[[GraphBuilder], Ref], ops: tuple[str, ...] | None = None,
              regroup: bool = False) -> list[NodeResult]:
    require_gpu()
    results = check(build, ops, regroup)
    assert results, "no kernel ran"
    bad = [(r.tensor.label(), r.tensor.op, r.nmse) for r in results if not r.ok]
    assert not bad, bad
    return results
