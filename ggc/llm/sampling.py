"""Token sampling: greedy by default; temperature, top-k and top-p with a seed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sampler:
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 40  # 0: off
    top_p: float = 0.95  # 1.0: off
    seed: int | None = None
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature <= 0.0:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / self.temperature
        order = np.argsort(-x, kind="stable")
        if self.top_k > 0:
            order = order[: self.top_k]
        p = np.exp(x[order] - x[order[0]])
        p /= p.sum()
        if self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), self.top_p) + 1)
            order, p = order[:keep], p[:keep] / p[:keep].sum()
        return int(self._rng.choice(order, p=p))
