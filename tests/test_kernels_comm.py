"""The ALL_REDUCE kernel (ggc_comm.c) on one rank: ggml has no such op, so its contract is checked
directly: dst = src0, then the runtime's hook (the sum over ranks) on dst, in place or not."""

from __future__ import annotations

import ctypes as C
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ggc.backends.c.abi import CWork, host_node, kernel_name, load_library, run_node
from ggc.ir.graph import Tensor
from ggc.ir.types import contiguous_strides, get_type

F32 = get_type("f32")
NE = (16, 3, 2, 1)
HOOK = C.CFUNCTYPE(None, C.POINTER(C.c_float), C.c_int64)


def all_reduce() -> Tensor:
    nb = contiguous_strides(F32, NE)
    src = Tensor(0, F32, NE, nb, name="y")  # type: ignore[arg-type]
    return Tensor(1, F32, NE, nb, op="ALL_REDUCE", src=[src], name="z")  # type: ignore[arg-type]


@contextmanager
def hooked(lib: C.CDLL, name: str, cb: C._CFuncPtr) -> Iterator[None]:
    """The library's hook `name` set to a Python stand-in for the runtime's collective, for a while."""
    hook = C.c_void_p.in_dll(lib, name)
    hook.value = C.cast(cb, C.c_void_p).value
    try:
        yield
    finally:
        hook.value = None


def values() -> np.ndarray:
    return np.random.default_rng(7).standard_normal(int(np.prod(NE))).astype(np.float32)


def test_kernel_name() -> None:
    assert kernel_name(all_reduce()) == "ggc_op_all_reduce"


def test_one_rank_is_a_copy() -> None:
    x = values()
    assert run_node(all_reduce(), [x.tobytes()]) == x.tobytes()


def test_in_place() -> None:
    t, x = all_reduce(), values()
    node, _dst, bufs = host_node(t, [x.tobytes()])
    node.dst.data = node.src[0].data  # dst is src0's memory, as the planner may lay it out
    load_library().ggc_op_all_reduce(C.byref(node), C.byref(CWork()))
    assert bufs[0].raw == x.tobytes()


def test_hook_sums_dst_after_the_copy() -> None:
    """The hook gets dst and its element count: a stand-in for two ranks with equal values doubles them."""
    lib, t, x = load_library(), all_reduce(), values()
    seen: list[int] = []

    def twice(data: C.POINTER(C.c_float), n: int) -> None:  # type: ignore[valid-type]
        seen.append(n)
        a = np.ctypeslib.as_array(data, (n,))
        a += a

    cb = HOOK(twice)
    with hooked(lib, "ggc_all_reduce_hook", cb):
        out = np.frombuffer(run_node(t, [x.tobytes()], lib=lib), np.float32)
    assert seen == [x.size] and np.array_equal(out, 2 * x)


# ---- ALL_GATHER: every rank's part along dim, interleaved into the whole
GATHER_HOOK = C.CFUNCTYPE(None, C.c_void_p, C.c_size_t, C.c_void_p)


def all_gather(dim: int, ranks: int) -> Tensor:
    part = list(NE)
    part[dim] //= ranks if NE[dim] % ranks == 0 else 1
    pne = tuple(part)
    src = Tensor(0, F32, pne, contiguous_strides(F32, pne), name="y")  # type: ignore[arg-type]
    whole = tuple(n * (ranks if k == dim else 1) for k, n in enumerate(pne))
    return Tensor(1, F32, whole, contiguous_strides(F32, whole), op="ALL_GATHER",  # type: ignore[arg-type]
                  params={"dim": dim}, src=[src], name="z")


def test_gather_on_one_rank_is_a_copy() -> None:
    t = all_gather(1, 1)
    x = np.random.default_rng(3).standard_normal(t.src[0].nelements).astype(np.float32)
    assert run_node(t, [x.tobytes()]) == x.tobytes()


def test_gather_interleaves_the_parts_along_their_dim() -> None:
    """A stand-in for 2 ranks: rank 1's part is rank 0's plus 100. The whole must be the two parts
    side by side along dim, for every index of the other dims."""
    lib = load_library()
    for dim in (0, 1, 2):
        t = all_gather(dim, 2)
        x = np.random.default_rng(dim).standard_normal(t.src[0].nelements).astype(np.float32)

        def gather(part: int, nbytes: int, dst: int) -> None:
            p = np.frombuffer(C.string_at(part, nbytes), np.float32)
            C.memmove(dst, np.concatenate([p, p + 100]).tobytes(), 2 * nbytes)

        cb = GATHER_HOOK(gather)
        with hooked(lib, "ggc_all_gather_hook", cb):
            out = np.frombuffer(run_node(t, [x.tobytes()], lib=lib), np.float32)
        part = x.reshape(t.src[0].ne[::-1])
        want = np.concatenate([part, part + 100], axis=3 - dim)
        assert np.array_equal(out, want.reshape(-1)), dim
