"""The CUDA ALL_REDUCE and ALL_GATHER kernels (ggc_cuda_comm.cu): ggml has no such ops, so their
contract is checked directly, on one GPU. On one rank they copy; with the runtime's collectives
set (here the harness's stand-ins for R ranks, rank r holding the values plus 100 r) ALL_REDUCE
hands the sum over ranks to dst, and ALL_GATHER interleaves the ranks' parts along their dim."""

from __future__ import annotations

import ctypes as C
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from ggc.backends.cuda.abi import load_library, run_node
from tests.cuda_check import require_gpu
from tests.test_kernels_comm import all_gather, all_reduce, values


@pytest.fixture(autouse=True)
def _gpu() -> None:
    require_gpu()


@contextmanager
def stand_ins(ranks: int) -> Iterator[C.CDLL]:
    lib = load_library()
    lib.ggc_cuda_test_collectives(ranks)
    try:
        yield lib
    finally:
        lib.ggc_cuda_test_collectives(1)


def test_one_rank_is_a_copy() -> None:
    x = values()
    assert run_node(all_reduce(), [x.tobytes()]) == x.tobytes()
    t = all_gather(1, 1)
    y = np.random.default_rng(3).standard_normal(t.src[0].nelements).astype(np.float32)
    assert run_node(t, [y.tobytes()]) == y.tobytes()


@pytest.mark.parametrize("ranks", [2, 4])
def test_all_reduce_gives_the_sum_over_ranks(ranks: int) -> None:
    x = values()
    with stand_ins(ranks) as lib:
        out = np.frombuffer(run_node(all_reduce(), [x.tobytes()], lib=lib), np.float32)
    np.testing.assert_allclose(out, ranks * x + 100 * ranks * (ranks - 1) / 2, rtol=1e-6)


@pytest.mark.parametrize("dim", [0, 1, 2])
@pytest.mark.parametrize("ranks", [2, 4])
def test_all_gather_interleaves_the_parts_along_their_dim(dim: int, ranks: int) -> None:
    t = all_gather(dim, ranks)
    x = np.random.default_rng(dim).standard_normal(t.src[0].nelements).astype(np.float32)
    with stand_ins(ranks) as lib:
        out = np.frombuffer(run_node(t, [x.tobytes()], lib=lib), np.float32)
    part = x.reshape(t.src[0].ne[::-1])
    want = np.concatenate([part + 100 * r for r in range(ranks)], axis=3 - dim)
    assert np.array_equal(out, want.reshape(-1))
