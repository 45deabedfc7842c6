"""`ggc verify`: llama.cpp's own node values against a target computing the captured graph.

llama.cpp runs a real batch with the eval callback, which records every node's value and every
leaf it read (inputs, KV cache). A target (targets.py: ggml rebuilt from the IR, or a generated
program) computes the captured graph from the same leaf values and is compared node by node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..capture.llama import LlamaSession, Recording, SessionOptions
from ..errors import GgcError
from ..ir.graph import Graph
from .compare import NodeResult
from .targets import TARGETS, Evaluator

PREFIX_TOKENS = 4  # at least this many tokens are decoded first, so the KV cache holds history
KV_PAD = 256  # llama.cpp pads the number of KV cells attended to a multiple of this


@dataclass
class VerifyResult:
    graph: Graph
    results: list[NodeResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def record_llama(session: LlamaSession, graph: Graph, n_tokens: int, n_outputs: int, seed: int = 0) -> Recording:
    """Decode a prefix, then record the checked batch of n_tokens real token ids.

    The captured graph attends over the whole cache, while llama.cpp attends over the used cells
    padded to a multiple of KV_PAD: the prefix is made long enough for the two to agree.
    """
    import numpy as np

    n_ctx = session.opts.n_ctx
    prefix = max(PREFIX_TOKENS, n_ctx - KV_PAD + 1 - n_tokens)
    if prefix + n_tokens > n_ctx:
        raise GgcError(f"--tokens {n_tokens} after a {prefix}-token prefix does not fit --ctx {n_ctx}")
    rng = np.random.default_rng(seed)
    n_vocab = session.ll.llama_vocab_n_tokens(session.vocab)
    prompt = session.tokenize("The quick brown fox jumps over the lazy dog, again and again and again.")
    ids = (prompt + [int(x) for x in rng.integers(3, n_vocab, size=prefix + n_tokens)])[: prefix + n_tokens]
    step = session.opts.n_batch
    for i in range(0, prefix, step):
        session.decode(ids[i : min(i + step, prefix)], i)
    rec = session.decode(ids[prefix:], prefix, n_outputs, record=True)
    assert rec is not None
    nodes = graph.nodes
    if len(rec.nodes) != len(nodes) or any(n != t.name for (n, _), t in zip(rec.nodes, nodes)):
        raise GgcError(
            f"llama.cpp ran {len(rec.nodes)} nodes, the captured graph has {len(nodes)}: the graphs differ "
            f"(--ctx must be a multiple of {KV_PAD})"
        )
    for (_, data), t in zip(rec.nodes, nodes):
        if len(data) != t.nbytes:
            raise GgcError(f"{t.label()}: llama.cpp's value has {len(data)} bytes, the captured node {t.nbytes}")
    return rec


def verify_model(
    model: str | Path,
    n_tokens: int,
    n_outputs: int = 1,
    opts: SessionOptions | None = None,
    target: str | Evaluator = "ggml",
    graph_file: str | Path | None = None,
) -> VerifyResult:
    from ..formats import ggraph

    with LlamaSession(model, opts) as s:
        graph, _ = s.capture(n_tokens, n_outputs)
        if graph_file is not None:
            exported = ggraph.load(graph_file)
            if ggraph.write(exported) != ggraph.write(graph):
                raise GgcError(f"{graph_file}: this graph is not the one llama.cpp builds for {model} "
                               f"with --tokens {n_tokens}")
            graph = exported
        rec = record_llama(s, graph, n_tokens, n_outputs)
    expected = {t.id: data for t, (_, data) in zip(graph.nodes, rec.nodes)}
    evaluator = TARGETS[target] if isinstance(target, str) else target
    results = evaluator(graph, str(model), rec.leafs_by_id(graph), expected)
    if [r.tensor.id for r in results] != [t.id for t in graph.nodes]:
        raise GgcError(f"the evaluator reported {len(results)} of {len(graph.nodes)} nodes")
    return VerifyResult(graph, results)
