"""Fill a captured llama.cpp graph's inputs for a batch of tokens, as llama.cpp does.

One sequence, cells in order: with llama.cpp's default full-size caches the token at position p
lives in KV cell p of every cache, so the slot indices are the positions. The mask row of a token
at position p keeps (0) the cells 0..p and drops (-inf) the others; a sliding-window layer also
drops cells at or beyond its window (p - p_cell >= n_swa), as llama_hparams::is_masked_swa does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import GgcError
from ..formats.gguf_file import GgufFile
from ..ir.graph import Graph, Tensor

_NP = {"i32": np.int32, "i64": np.int64, "f32": np.float32, "f16": np.float16}


@dataclass
class Swa:
    """Sliding-window attention of a model: window size and which layers use it."""

    n_swa: int
    layers: frozenset[int]

    @classmethod
    def from_gguf(cls, gf: GgufFile, n_layer: int) -> Swa:
        arch = str(gf.metadata.get("general.architecture", ""))
        n_swa = int(gf.metadata.get(f"{arch}.attention.sliding_window", 0) or 0)
        if n_swa <= 0:
            return cls(0, frozenset())
        pattern = gf.metadata.get(f"{arch}.attention.sliding_window_pattern")
        if isinstance(pattern, list):  # one bool per layer
            return cls(n_swa, frozenset(i for i, v in enumerate(pattern) if v))
        # llama.cpp's default pattern for these architectures: the last layer of every n is dense
        n = int(pattern) if pattern is not None else {"gemma3": 6, "gemma2": 2, "cohere2": 4}.get(arch, 0)
        if n <= 0:
            return cls(n_swa, frozenset(range(n_layer)))
        return cls(n_swa, frozenset(i for i in range(n_layer) if i % n < n - 1))


def _layer_of_mask(graph: Graph, mask: Tensor) -> int | None:
    """The layer whose attention reads this mask: from the KV cache its attention node also reads."""
    for u in graph.consumers()[mask.id]:
        for s in u.src:
            r = s.view_src if s is not None and s.view_src is not None else s
            m = re.fullmatch(r"cache_k_l(\d+)", r.name) if r is not None else None
            if m:
                return int(m.group(1))
    return None


class InputFiller:
    """Knows every input of one graph and how to fill it for (tokens, first position)."""

    def __init__(self, graph: Graph, swa: Swa) -> None:
        self.graph = graph
        self.swa = swa
        users = graph.consumers()
        self.inputs = [t for t in graph.leafs if "input" in t.flags and users[t.id]]
        self.n_tokens = int(graph.meta.get("n_tokens", 0))
        for t in self.inputs:
            if not self._known(t.name):
                raise GgcError(f"ggc run does not know how to fill the input {t.label()} of this architecture")
        self.mask_is_swa = {t.id: (_layer_of_mask(graph, t) in swa.layers) for t in self.inputs if "mask" in t.name}
        self._cells: dict[int, np.ndarray] = {}  # the cell indices of a mask width
        self._triangles: dict[tuple[int, str], np.ndarray] = {}  # _triangle's, by size and type
        self.dtypes = {t.id: _dtype(t) for t in self.inputs}  # what fill() expects, by tensor id
        self._kinds = [(t, "tokens" if t.name == "inp_tokens" else "pos" if t.name == "inp_pos"
                        else "out_ids" if t.name == "out_ids" else "idxs" if t.name.endswith(("_k_idxs", "_v_idxs"))
                        else "mask") for t in self.inputs]
        for t in self.inputs:
            if not self._fits(t):
                raise GgcError(f"{t.label()}: cannot fill {t.nelements} elements for a batch of {self.n_tokens}")

    def _fits(self, t: Tensor) -> bool:
        n = self.n_tokens
        if t.name == "inp_tokens" or t.name.endswith(("_k_idxs", "_v_idxs")):
            return t.nelements == n
        if t.name == "inp_pos":  # M-RoPE: several positions per token
            return n > 0 and t.nelements % n == 0
        if t.name == "out_ids":
            return t.nelements <= n
        return t.ne[1] >= n  # a mask: a row per token at least

    @staticmethod
    def _known(name: str) -> bool:
        return name in ("inp_tokens", "inp_pos", "out_ids") or name.endswith(("_k_idxs", "_v_idxs", "kq_mask"))

    def values(self, tokens: list[int], pos0: int) -> dict[int, bytes]:
        """Bytes for every input, by tensor id."""
        arrays = {t.id: np.empty(t.nelements, self.dtypes[t.id]) for t in self.inputs}
        self.fill(arrays, tokens, pos0)
        return {tid: a.tobytes() for tid, a in arrays.items()}

    def fill(self, arrays: dict[int, np.ndarray], tokens: list[int], pos0: int) -> None:
        """Write every input's values into arrays[tensor id] (flat, of the input's element type): the
        decode loop hands views of one reusable buffer, so a step allocates nothing."""
        n = len(tokens)
        if n != self.n_tokens:
            raise GgcError(f"this graph takes {self.n_tokens} tokens, got {n}")
        pos = np.arange(pos0, pos0 + n) if n > 1 else pos0
        for t, kind in self._kinds:
            a = arrays[t.id]
            if kind == "tokens":
                a[:] = tokens
            elif kind == "pos":  # M-RoPE repeats the positions
                a.reshape(-1, n)[:] = pos
            elif kind == "out_ids":  # the last n_outputs tokens
                a[:] = np.arange(n - t.nelements, n)
            elif kind == "idxs":
                a[:] = pos
            elif n == 1:  # decode: one row, filled by slices
                self._mask_row(t, a, pos0, self.mask_is_swa[t.id])
            else:
                self._mask(t, a, pos, self.mask_is_swa[t.id])

    def _mask(self, t: Tensor, out: np.ndarray, pos: np.ndarray, swa: bool) -> None:
        n_kv, n_rows = t.ne[0], t.ne[1]
        n, p0 = len(pos), int(pos[0])
        if not swa and p0 + n <= n_kv:  # by slices: the past, then the batch's own triangle (pos is p0..p0+n-1)
            m = out.reshape(-1, n_rows, n_kv)
            m[:] = -np.inf
            m[:, :n, :p0] = 0.0
            m[:, :n, p0 : p0 + n] = self._triangle(n, out.dtype)
            return
        q = np.full((n_rows, 1), -1)
        q[: len(pos), 0] = pos  # rows past the batch (padding) see nothing
        cells = self._cells.get(n_kv)
        if cells is None:
            cells = self._cells[n_kv] = np.arange(n_kv)[None, :]
        keep = (cells <= q) & (q >= 0)
        if swa:
            keep &= (q - cells) < self.swa.n_swa
        out.reshape(-1, n_rows, n_kv)[:] = np.where(keep, 0.0, -np.inf)

    def _triangle(self, n: int, dtype: np.dtype) -> np.ndarray:
        """The mask of n consecutive tokens over their own cells: token i sees cells 0..i (made once)."""
        key = (n, np.dtype(dtype).str)
        tri = self._triangles.get(key)
        if tri is None:
            tri = self._triangles[key] = np.where(np.tri(n, dtype=bool), 0.0, -np.inf).astype(dtype)
        return tri

    def _mask_row(self, t: Tensor, out: np.ndarray, p: int, swa: bool) -> None:
        """_mask for a batch of one token at position p: cells 0..p kept (those inside the window
        when swa), every other cell and every padding row dropped."""
        m = out.reshape(-1, t.ne[1], t.ne[0])
        m[:, 0, : p + 1] = 0.0
        m[:, 0, p + 1 :] = -np.inf
        if swa and p - self.swa.n_swa >= 0:
            m[:, 0, : p - self.swa.n_swa + 1] = -np.inf
        if t.ne[1] > 1:
            m[:, 1:, :] = -np.inf


def _dtype(t: Tensor) -> type:
    dt = _NP.get(t.type.name)
    if dt is None:
        raise GgcError(f"{t.label()}: unexpected input type {t.type.name}")
    return dt
