"""llama.cpp's own greedy decoding, the reference that `ggc run --check` (and bench/llama_cuda_check.sh)
compare against: llama-cpp-python on the CPU, through ggc's LlamaSession, with the prompt split as ggc run
splits it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..capture.llama import LlamaSession, SessionOptions


def greedy_logits(path: str | Path, prompt: list[int], n: int, ctx: int, batch: int) -> Iterator[np.ndarray]:
    """The logits each of n greedily generated tokens is picked from: the prompt goes in full chunks of
    `batch` tokens (when batch > 1), the rest one token at a time, then each step's argmax (the first index
    of the maximum) is fed back. Closing the iterator early closes the session."""
    with LlamaSession(path, SessionOptions(n_ctx=ctx, n_batch=batch)) as s:
        pos = 0
        while len(prompt) - pos >= batch and batch > 1:
            s.decode(prompt[pos : pos + batch], pos)
            pos += batch
        for tok in prompt[pos:]:
            s.decode([tok], pos)
            pos += 1
        for i in range(n):
            logits = np.asarray(s.logits())
            yield logits
            if i + 1 < n:
                s.decode([int(np.argmax(logits))], pos)
                pos += 1
