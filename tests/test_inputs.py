"""ggc run's input filling (ggc.llm.inputs) against the rule it implements, on real captured graphs:
the decode fast path (one token, masks by slices) and the batch path (vectorized) give llama.cpp's
causal and sliding-window masks, positions and slot indices."""

from __future__ import annotations

import numpy as np
import pytest

from ggc.capture.llama import LlamaSession, SessionOptions
from ggc.formats.gguf_file import read_gguf
from ggc.llm.inputs import InputFiller, Swa
from ggc.models.quantize import tiny_model


def _expected_mask(n_kv: int, n_rows: int, pos: list[int], n_swa: int) -> np.ndarray:
    m = np.full((n_rows, n_kv), -np.inf, np.float32)
    for r, p in enumerate(pos):
        for c in range(n_kv):
            if c <= p and (n_swa == 0 or p - c < n_swa):
                m[r, c] = 0.0
    return m


@pytest.mark.parametrize("n_tokens", [1, 8])
def test_fill_matches_the_mask_rule(n_tokens: int) -> None:
    model = tiny_model("gemma3", "q8_0")  # sliding-window layers and global ones
    with LlamaSession(model, SessionOptions(n_ctx=256, n_batch=8)) as s:
        g = s.capture(n_tokens, 1)[0]
    gf = read_gguf(model)
    n_layer = int(gf.metadata["gemma3.block_count"])
    swa = Swa.from_gguf(gf, n_layer)
    assert swa.n_swa > 0 and swa.layers
    f = InputFiller(g, swa)
    masks = [t for t in f.inputs if "mask" in t.name]
    assert any(f.mask_is_swa[t.id] for t in masks) and not all(f.mask_is_swa[t.id] for t in masks)
    arrays = {t.id: np.full(t.nelements, 7, f.dtypes[t.id]) for t in f.inputs}  # stale values must go
    for pos0 in (0, 5, swa.n_swa + 3, 200):
        toks = [11 + i for i in range(n_tokens)]
        f.fill(arrays, toks, pos0)
        pos = list(range(pos0, pos0 + n_tokens))
        for t in f.inputs:
            a = arrays[t.id]
            if t.name == "inp_tokens":
                assert a.tolist() == toks
            elif t.name in ("inp_pos",) or t.name.endswith(("_k_idxs", "_v_idxs")):
                assert a.tolist() == pos
            elif t.name == "out_ids":
                assert a.tolist() == list(range(n_tokens - t.nelements, n_tokens))
            else:
                want = _expected_mask(t.ne[0], t.ne[1], pos, swa.n_swa if f.mask_is_swa[t.id] else 0)
                got = a.astype(np.float32).reshape(-1, t.ne[1], t.ne[0])
                assert all(np.array_equal(x, want) for x in got), (t.name, pos0)
        # values() is the same fill into fresh arrays
        assert all(v == arrays[tid].tobytes() for tid, v in f.values(toks, pos0).items())
