"""Random-weight GGUF models with the shapes and tensor types of real ones, for benchmarks.

Decode speed depends on shapes and weight types, not on the weights' values, so these stand in for downloaded models.
Quantized tensors are written as random bytes with their scale fields set so that every weight has a std of about
1/sqrt(fan_in): activations stay near unit scale through all layers. Tensors are generated in chunks, each chunk from
its own seeded generator, by a thread pool (numpy releases the GIL), and streamed to the file, so a 7B model takes
well under a minute and little memory. The output is a deterministic function of (name, seed, overrides).

    python bench/models.py NAME OUT.gguf    # NAME one of BENCH_MODELS
    python bench/models.py --weight-bytes DIR NAME...   # DIR/models.json: weight_bytes of DIR/NAME.gguf
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

if __name__ == "__main__":  # run as a script: make the repo's ggc importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ggc.models.tiny import ArchSpec, _add_hparams, _add_tokenizer, atomic_target, build_vocab  # noqa: E402

QT = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class BenchModel:
    spec: ArchSpec
    n_vocab: int
    wtype: QT  # every 2D weight but output.weight
    output_type: QT
    file_type: gguf.LlamaFileType


_LLAMA2_7B = ArchSpec(
    "llama", n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, head_dim=128, n_ff=11008, n_ctx_train=4096
)
_LLAMA32_1B = ArchSpec(
    "llama",
    n_embd=2048,
    n_layer=16,
    n_head=32,
    n_head_kv=8,
    head_dim=64,
    n_ff=8192,
    n_ctx_train=131072,
    rope_freq_base=500000.0,
)

# Types as llama-quantize lays them out: for Q4_0 an untied output.weight becomes Q6_K, token_embd stays Q4_0.
BENCH_MODELS: dict[str, BenchModel] = {
    "llama2-7b-q4_0": BenchModel(_LLAMA2_7B, 32000, QT.Q4_0, QT.Q6_K, gguf.LlamaFileType.MOSTLY_Q4_0),
    "llama3.2-1b-f16": BenchModel(_LLAMA32_1B, 128256, QT.F16, QT.F16, gguf.LlamaFileType.MOSTLY_F16),
    "llama3.2-1b-q4_0": BenchModel(_LLAMA32_1B, 128256, QT.Q4_0, QT.Q6_K, gguf.LlamaFileType.MOSTLY_Q4_0),
}

# Shapes for quick tests of the same code path: a few MB per model. Row lengths stay multiples of 256 for Q6_K.
SMALL_SHAPES: dict[str, int] = {
    "n_embd": 256,
    "n_layer": 2,
    "n_head": 4,
    "n_head_kv": 2,
    "head_dim": 64,
    "n_ff": 768,
    "n_vocab": 1024,
}

CHUNK_BYTES = 8 << 20
_U64 = np.uint64

# Weights must have mean zero: a common offset in every row adds a rank-1 term along the all-ones direction that grows
# by ~0.1 sqrt(fan_in) per matmul. Q4_0's nibbles q - 8 span -8..7, so each random byte's nibbles are remapped 0 -> 8
# (-8 -> 0), which leaves them symmetric. Q6_K's q - 32 spans -32..31; its sub-block scales get random signs instead,
# as real ones have, and sizes 1..16, which keeps the f16 super-block scale d out of f16's subnormal range.
_Q6_K_SCALES = np.array([(-1 if b & 16 else 1) * ((b & 15) + 1) for b in range(256)], np.int8).view(np.uint8)
# E[(q - zero)^2] of the quants so drawn
_Q4_0_MS = sum((q - 8) ** 2 for q in range(16) if q) / 16
_Q6_K_MS = sum((q - 32) ** 2 for q in range(64)) / 64 * sum(s * s for s in range(1, 17)) / 16


# ---------------------------------------------------------------------------------------------------------------------
# chunk makers: (chunk's rng, the tensor's table, n weights) -> the bytes of n weights


def _block_scales(rng: np.random.Generator, target_rms: float) -> np.ndarray:
    """256 f16 block scales spread over [0.75, 1.25] x base, whose root mean square is target_rms."""
    tab = 0.75 + 0.5 * rng.random(256)
    return (tab * (target_rms / math.sqrt(np.mean(tab**2)))).astype(np.float16)


def _raw(rng: np.random.Generator, nbytes: int) -> np.ndarray:
    return rng.bit_generator.random_raw(-(-nbytes // 8)).view(np.uint8)[:nbytes]


def _q4_0_chunk(rng: np.random.Generator, scales: np.ndarray, n: int) -> np.ndarray:
    nbytes = n // 32 * 18
    x = rng.bit_generator.random_raw(-(-nbytes // 8))
    # Set bit 3 of every zero nibble (0 -> 8), 16 nibbles per word at once: 3x faster than a table lookup per byte.
    y = x >> _U64(1)
    y |= x
    y |= y >> _U64(2)  # bit 0 of each nibble: whether the nibble is nonzero
    np.bitwise_and(~y, _U64(0x1111111111111111), out=y)
    y <<= _U64(3)
    x |= y
    blocks = x.view(np.uint8)[:nbytes].reshape(-1, 18)  # d f16, then 16 bytes of nibbles
    blocks[:, 0:2] = scales[blocks[:, 0]].view(np.uint8).reshape(-1, 2)
    return blocks


def _q6_k_chunk(rng: np.random.Generator, scales: np.ndarray, n: int) -> np.ndarray:
    blocks = _raw(rng, n // 256 * 210).reshape(-1, 210)  # ql[128], qh[64], scales int8[16], d f16
    blocks[:, 192:208] = _Q6_K_SCALES[blocks[:, 192:208]]
    blocks[:, 208:210] = scales[blocks[:, 208]].view(np.uint8).reshape(-1, 2)
    return blocks


def _f16_chunk(rng: np.random.Generator, table: np.ndarray, n: int) -> np.ndarray:
    # Draws from a 64K-entry table of normal samples: an order of magnitude faster than standard_normal.
    return table[_raw(rng, 2 * n).view(np.uint16)]


def _chunk_maker(rng: np.random.Generator, qtype: QT, std: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    """A function making n weights of type qtype with the given std; rng draws its per-tensor table."""
    if qtype == QT.Q4_0:
        scales = _block_scales(rng, std / math.sqrt(_Q4_0_MS))
        return lambda r, n: _q4_0_chunk(r, scales, n)
    if qtype == QT.Q6_K:
        scales = _block_scales(rng, std / math.sqrt(_Q6_K_MS))
        assert scales.min() >= np.finfo(np.float16).tiny, "Q6_K scale would be subnormal"
        return lambda r, n: _q6_k_chunk(r, scales, n)
    if qtype == QT.F16:
        table = (rng.standard_normal(1 << 16) * std).astype(np.float16)
        return lambda r, n: _f16_chunk(r, table, n)
    raise ValueError(f"no generator for {qtype.name}")


# ---------------------------------------------------------------------------------------------------------------------
# tensor plan


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, row_len)
    qtype: QT

    @property
    def nbytes(self) -> int:
        block, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * type_size


def _plan(m: BenchModel) -> list[_Tensor]:
    s, wt = m.spec, m.wtype
    n_q, n_kv = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    out = [_Tensor("token_embd.weight", (m.n_vocab, s.n_embd), wt)]
    for i in range(s.n_layer):
        p = f"blk.{i}"
        out += [
            _Tensor(f"{p}.attn_norm.weight", (s.n_embd,), QT.F32),
            _Tensor(f"{p}.attn_q.weight", (n_q, s.n_embd), wt),
            _Tensor(f"{p}.attn_k.weight", (n_kv, s.n_embd), wt),
            _Tensor(f"{p}.attn_v.weight", (n_kv, s.n_embd), wt),
            _Tensor(f"{p}.attn_output.weight", (s.n_embd, n_q), wt),
            _Tensor(f"{p}.ffn_norm.weight", (s.n_embd,), QT.F32),
            _Tensor(f"{p}.ffn_gate.weight", (s.n_ff, s.n_embd), wt),
            _Tensor(f"{p}.ffn_up.weight", (s.n_ff, s.n_embd), wt),
            _Tensor(f"{p}.ffn_down.weight", (s.n_embd, s.n_ff), wt),
        ]
    out += [
        _Tensor("output_norm.weight", (s.n_embd,), QT.F32),
        _Tensor("output.weight", (m.n_vocab, s.n_embd), m.output_type),
    ]
    for t in out:
        block = gguf.GGML_QUANT_SIZES[t.qtype][0]
        if t.shape[-1] % block:
            raise ValueError(f"{t.name}: row length {t.shape[-1]} is not a multiple of {t.qtype.name}'s {block}")
    return out


def _chunks(t: _Tensor, index: int, seed: int) -> Iterator[Callable[[], np.ndarray]]:
    """Jobs making t's bytes in order, each from its own generator so that they can run in any thread."""
    if t.qtype == QT.F32:  # a norm: small, near 1, not all ones so that a dropped norm weight shows
        rng = np.random.default_rng([seed, index])
        yield lambda: (1.0 + 0.1 * rng.standard_normal(t.shape[0], dtype=np.float32)).view(np.uint8)
        return
    n_rows, row_len = t.shape
    make = _chunk_maker(np.random.default_rng([seed, index]), t.qtype, row_len**-0.5)
    rows = max(1, CHUNK_BYTES * n_rows // t.nbytes)
    for c, r0 in enumerate(range(0, n_rows, rows)):
        n = (min(n_rows, r0 + rows) - r0) * row_len
        yield lambda c=c, n=n: make(np.random.default_rng([seed, index, c]), n)


# ---------------------------------------------------------------------------------------------------------------------
# writing


def bench_model(name: str, overrides: dict[str, int | float] | None = None) -> BenchModel:
    """The model called name; overrides replaces ArchSpec fields and/or n_vocab (for scaled-down test variants)."""
    if name not in BENCH_MODELS:
        raise ValueError(f"unknown bench model {name!r}; expected one of {tuple(BENCH_MODELS)}")
    m = BENCH_MODELS[name]
    if overrides:
        over = dict(overrides)
        n_vocab = int(over.pop("n_vocab", m.n_vocab))
        m = dataclasses.replace(m, spec=dataclasses.replace(m.spec, **over), n_vocab=n_vocab)
    return m


def write_bench_model(
    name: str,
    path: str | Path,
    *,
    seed: int = 0,
    overrides: dict[str, int | float] | None = None,
    threads: int | None = None,
) -> Path:
    """Write the bench model called name to path (atomically) and return path."""
    m = bench_model(name, overrides)
    plan = _plan(m)
    tokens, scores, types = build_vocab(m.n_vocab)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_target(path)
    try:
        # The writer writes header, metadata and tensor table; the data is then appended here in chunks, laid out as
        # the writer's table says: each tensor starts at the next multiple of the alignment.
        w = gguf.GGUFWriter(tmp, m.spec.arch)
        w.add_name(f"ggc-bench-{name}")
        w.add_file_type(int(m.file_type))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hparams(w, m.spec, m.n_vocab)
        _add_tokenizer(w, tokens, scores, types)
        for t in plan:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        align = w.data_alignment
        n_threads = threads or os.cpu_count() or 1
        with open(tmp, "ab") as f, ThreadPoolExecutor(n_threads) as pool:
            jobs = ((t, c) for i, t in enumerate(plan) for c in _chunks(t, i, seed))
            pending: deque[tuple[_Tensor, Future[np.ndarray]]] = deque()
            written = 0
            current: _Tensor | None = None
            while True:
                # Keep a bounded window of chunks in flight: parallel generation, bounded memory.
                while len(pending) < 2 * n_threads and (job := next(jobs, None)) is not None:
                    pending.append((job[0], pool.submit(job[1])))
                if not pending:
                    break
                t, fut = pending.popleft()
                if t is not current:
                    if current is not None:
                        assert written == current.nbytes, current.name
                    f.write(b"\0" * (-f.tell() % align))
                    current, written = t, 0
                data = fut.result()
                f.write(memoryview(data).cast("B"))
                written += data.nbytes
            assert current is not None and written == current.nbytes
            f.write(b"\0" * (-f.tell() % align))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def weight_bytes(path: str | Path) -> dict[str, int]:
    """Bytes of weights in the GGUF, and the bytes one decoded token reads: every weight but token_embd, plus one
    row of token_embd (the numerator of the memory-bandwidth floor on decode time); params: the matrices' elements
    but token_embd's (a token costs 2 FLOPs each)."""
    from ggc.formats.gguf_file import read_gguf

    total = embd_row = per_token = params = 0
    for t in read_gguf(path).tensors:
        total += t.nbytes
        if t.name == "token_embd.weight":
            embd_row = t.nbytes // math.prod(t.ne[1:])
        else:
            per_token += t.nbytes
            if len([n for n in t.ne if n > 1]) >= 2:  # matrices: 2 FLOPs a parameter a token
                params += math.prod(t.ne)
    return {"total": total, "per_token": per_token + embd_row, "token_embd_row": embd_row, "params": params}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--weight-bytes"] and len(argv) > 2:  # DIR NAME...: DIR/models.json from DIR/NAME.gguf
        d = Path(argv[1])
        (d / "models.json").write_text(json.dumps({n: weight_bytes(d / f"{n}.gguf") for n in argv[2:]}, indent=1))
        return 0
    if len(argv) != 2:
        print(f"usage: python bench/models.py NAME OUT.gguf | --weight-bytes DIR NAME...\n"
              f"  NAME: {' | '.join(BENCH_MODELS)}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    path = write_bench_model(argv[0], argv[1])
    wb = weight_bytes(path)
    print(
        f"{path}: {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - t0:.1f} s; "
        f"{wb['per_token'] / 2**30:.3f} GiB of weights read per token"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
