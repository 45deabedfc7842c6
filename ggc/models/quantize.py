"""Quantized tiny models, made by llama.cpp's own quantizer so that their layout is exactly what llama.cpp produces."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import llama_cpp.llama_cpp as llama_lib

from ggc.models.tiny import ARCHS, FTYPES, MODEL_VERSION, atomic_target, write_tiny_model

QUANTS: dict[str, int] = {
    "q8_0": llama_lib.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_0": llama_lib.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_k_m": llama_lib.LLAMA_FTYPE_MOSTLY_Q4_K_M,
}


def quantize(src: str | Path, dst: str | Path, quant: str) -> Path:
    """Quantize the GGUF model src into dst with llama_model_quantize (quant is a key of QUANTS)."""
    if quant not in QUANTS:
        raise ValueError(f"unknown quant {quant!r}; expected one of {tuple(QUANTS)}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(src)
    from ggc.capture.llama import quiet_llama_logs

    quiet_llama_logs()
    params = llama_lib.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = QUANTS[quant]
    rc = llama_lib.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, {quant}) failed with code {rc}")
    return dst


def default_cache_dir() -> Path:
    env = os.environ.get("GGC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ggc" / "models"


def tiny_model(arch: str, quant: str = "f16", cache_dir: str | Path | None = None) -> Path:
    """Path of the cached tiny model for arch in quant ("f16", "f32" or a QUANTS key), creating it when missing.

    Quantized models are made from the cached f16 one. Files are written under a temporary name and renamed into
    place, so a killed run never leaves a half-written model behind and concurrent callers never read one.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if quant not in FTYPES and quant not in QUANTS:
        raise ValueError(f"unknown quant {quant!r}; expected one of {(*FTYPES, *QUANTS)}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"tiny-{arch}-{quant}-v{MODEL_VERSION}.gguf"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    if quant in FTYPES:
        return write_tiny_model(path, arch, ftype=quant)  # writes atomically itself
    src = tiny_model(arch, "f16", cache)
    tmp = atomic_target(path)
    try:
        quantize(src, tmp, quant)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
