"""The C kernel harness itself, and the core type conversions."""

from __future__ import annotations

import ctypes as C
import re

import numpy as np

from ggc.backends.c.abi import C_TYPES, KERNEL_DIR, load_library
from tests.kernel_check import assert_ok, check
from tests.test_builder import act


def test_type_enum_matches_header() -> None:
    body = re.search(r"typedef enum \{(.*?)\} ggc_type;", (KERNEL_DIR / "ggc.h").read_text(), re.S).group(1)
    body = re.sub(r"/\*.*?\*/", " ", body, flags=re.S)
    names = [n.strip() for n in body.replace("\n", " ").split(",") if n.strip()]
    count = names.index("GGC_TYPE_COUNT")
    assert names[: count + 1] == ["GGC_TYPE_" + t.upper() for t in C_TYPES] + ["GGC_TYPE_COUNT"]
    # after the count: layouts only generated GPU programs use, numbered apart from the GGUF types (the
    # numbers the CUDA harness gives them: ggc/backends/cuda/abi.py)
    from ggc.backends.cuda.abi import GGC_TYPE_Q4_0R8, GGC_TYPE_Q6_KR8

    assert names[count + 1 :] == [f"GGC_TYPE_Q4_0R8 = {GGC_TYPE_Q4_0R8}", f"GGC_TYPE_Q6_KR8 = {GGC_TYPE_Q6_KR8}"]


def test_fp16_and_bf16_conversions_match_numpy_and_ggml() -> None:
    lib = load_library()
    lib.ggc_fp32_to_fp16.restype = C.c_uint16
    lib.ggc_fp32_to_fp16.argtypes = [C.c_float]
    lib.ggc_fp16_to_fp32.restype = C.c_float
    lib.ggc_fp16_to_fp32.argtypes = [C.c_uint16]
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.integers(-9, 6, 2000),
                         [0.0, -0.0, 65504.0, 65520.0, 1e-8, 5.96e-8, 2.98e-8, np.inf, -np.inf]]).astype(np.float32)
    for x in xs:
        assert lib.ggc_fp32_to_fp16(float(x)) == np.float32(x).astype(np.float16).view(np.uint16), x
    for h in range(0, 1 << 16, 7):
        want = np.uint16(h).view(np.float16).astype(np.float32)
        got = lib.ggc_fp16_to_fp32(h)
        assert (np.isnan(want) and np.isnan(got)) or np.float32(got) == want, h


def test_harness_runs_a_kernel_against_ggml() -> None:
    assert_ok(lambda b: b.op("scale", act(b, 64, 3), 0.37))
    assert_ok(lambda b: b.op("scale_bias", act(b, 64, 3, 2), 0.37, -1.5))


def test_harness_can_fail() -> None:
    """A kernel given the wrong parameter must not pass: the check is real."""
    from ggc.backends.c import abi

    real = abi.op_param_words
    abi.op_param_words = lambda t: [w ^ (1 << 22) if i == 0 else w for i, w in enumerate(real(t))]
    try:
        assert not all(r.ok for r in check(lambda b: b.op("scale", act(b, 64, 3), 0.37)))
    finally:
        abi.op_param_words = real
