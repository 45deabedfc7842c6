"""Looking at a graph: a text summary (`ggc show`) and a Graphviz drawing (`ggc dot`)."""

from __future__ import annotations

from .dot import layer_of, render, to_dot
from .summary import human_bytes, summarize

__all__ = ["human_bytes", "layer_of", "render", "summarize", "to_dot"]
