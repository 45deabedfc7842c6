"""Capture the graphs that llama.cpp builds for a GGUF model, and record what it computes.

A LlamaSession loads a model with llama.cpp on its plain CPU path, asks it for the graph of a
batch of N tokens (llama_graph_reserve, exported from libllama under its C++ name), and can run a
real batch with the eval callback to record every node's value and every leaf it read.
"""

from __future__ import annotations

import ctypes as C
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GgcError
from ..ir.graph import DataBinding, GgufData, Graph
from .ggml_lib import Ggml, GgmlTensor, load
from .walk import LiveGraph, read_tensor_bytes, to_ir

_RESERVE_SYMBOL = "_Z19llama_graph_reserveP13llama_contextjjj"


@dataclass
class Recording:
    """What llama.cpp computed in one llama_decode.

    nodes: each node's name and value, in execution order. leaf_reads: the bytes of each leaf a
    node read, keyed by (node index, slot) where slot is "s<j>" for source j, "r<j>" for the
    memory root of source j, and "v" for the node's own view parent. Leafs are keyed by where
    they are used, not by name: llama.cpp gives different tensors the same name.
    """

    nodes: list[tuple[str, bytes]] = field(default_factory=list)
    leaf_reads: dict[tuple[int, str], bytes] = field(default_factory=dict)

    def leafs_by_id(self, graph: Graph) -> dict[int, bytes]:
        """Resolve leaf reads to the IR tensor ids of the matching captured graph."""
        nodes = graph.nodes
        out: dict[int, bytes] = {}
        for (k, slot), data in self.leaf_reads.items():
            node = nodes[k]
            if slot == "v":
                t = node.view_src
            else:
                src = node.src[int(slot[1:])]
                t = src if slot[0] == "s" else (src.view_src if src is not None else None)
            if t is None or not t.is_leaf:
                raise GgcError(f"{node.label()}: llama.cpp read a leaf in slot {slot} that the captured graph lacks")
            out.setdefault(t.id, data)
        return out


@dataclass
class SessionOptions:
    n_ctx: int = 256  # KV cache cells
    n_batch: int = 512
    flash_attn: bool = True
    type_k: str = "f16"
    type_v: str = "f16"
    n_threads: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))


def gguf_tensor_names(path: str | Path) -> set[str]:
    from ..formats.gguf_file import read_gguf

    return {t.name for t in read_gguf(path).tensors}


class LlamaSession:
    def __init__(self, model_path: str | Path, opts: SessionOptions | None = None) -> None:
        import llama_cpp.llama_cpp as ll

        self.ll = ll
        self.g: Ggml = load()
        self.path = Path(model_path)
        self.opts = opts or SessionOptions()
        if not self.path.is_file():
            raise GgcError(f"{self.path}: no such file")
        self.weight_names = gguf_tensor_names(self.path)
        self._reserve = getattr(self.g.llama, _RESERVE_SYMBOL, None)
        if self._reserve is None:
            raise GgcError("this libllama does not export llama_graph_reserve")
        self._reserve.restype = C.c_void_p
        self._reserve.argtypes = [C.c_void_p, C.c_uint32, C.c_uint32, C.c_uint32]
        ll.llama_backend_init()
        quiet_llama_logs()
        mp = ll.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.use_extra_bufts = False  # ggml's plain CPU path: weight repacking crashed on tiny Q4_0 (AMX)
        self.model = ll.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise GgcError(f"{self.path}: llama.cpp could not load this model (unsupported architecture or bad GGUF)")
        self.recording: Recording | None = None
        self._cb = ll.ggml_backend_sched_eval_callback(self._on_eval)  # keep a reference: C holds it
        cp = ll.llama_context_default_params()
        o = self.opts
        cp.n_ctx = o.n_ctx
        cp.n_batch = o.n_batch
        cp.n_ubatch = o.n_batch
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = o.n_threads
        cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if o.flash_attn else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.type_k = self.g.type_num[o.type_k]
        cp.type_v = self.g.type_num[o.type_v]
        cp.cb_eval = self._cb
        cp.cb_eval_user_data = None
        cp.no_perf = True
        cp.offload_kqv = False
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise GgcError(f"{self.path}: llama.cpp could not create a context (n_ctx={o.n_ctx})")

    # ---- lifecycle
    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.ll.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> LlamaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- metadata
    @property
    def vocab(self) -> int:
        return self.ll.llama_model_get_vocab(self.model)

    def arch(self) -> str:
        buf = C.create_string_buffer(128)
        self.ll.llama_model_meta_val_str(self.model, b"general.architecture", buf, 128)
        return buf.value.decode()

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        raw = text.encode()
        n = len(raw) + 16
        toks = (self.ll.llama_token * n)()
        k = self.ll.llama_tokenize(self.vocab, raw, len(raw), toks, n, add_bos, True)
        if k < 0:
            raise GgcError("tokenization failed")
        return list(toks[:k])

    # ---- capture
    def classify(self, ptr: int, s: GgmlTensor) -> tuple[frozenset[str], DataBinding]:
        """Weights bind to their GGUF tensor; the KV cache is state; flagged inputs stay inputs."""
        name = s.name.decode("utf-8", "replace")
        if s.flags & 1:
            return frozenset(), None
        if name in self.weight_names:
            return frozenset({"weight"}), GgufData(name)
        if s.data:
            return frozenset({"state"}), None
        return frozenset(), None

    def capture(self, n_tokens: int, n_outputs: int = 1) -> tuple[Graph, LiveGraph]:
        """The graph llama.cpp would run for a batch of n_tokens (one sequence) over the whole KV cache."""
        if n_tokens < 1 or n_tokens > self.opts.n_batch:
            raise GgcError(f"--tokens must be in 1..{self.opts.n_batch}, got {n_tokens}")
        if not 1 <= n_outputs <= n_tokens:
            raise GgcError(f"--outputs must be in 1..{n_tokens}, got {n_outputs}")
        cgraph = self._reserve(self.ctx, n_tokens, 1, n_outputs)
        if not cgraph:
            raise GgcError("llama_graph_reserve failed")
        self.last_cgraph = cgraph  # valid until the next capture
        graph, live = to_ir(self.g, cgraph, self.classify)
        graph.meta.update({
            "source": "llama.cpp",
            "model": self.path.name,
            "arch": self.arch(),
            "n_tokens": n_tokens,
            "n_outputs": n_outputs,
            "n_ctx": self.opts.n_ctx,
            "flash_attn": int(self.opts.flash_attn),
        })
        return graph, live

    # ---- running
    def _on_eval(self, t: int, ask: bool, _ud: int) -> bool:
        rec = self.recording
        if rec is None:
            return False
        s = self.g.tensor(t)
        if ask:
            # Before the node runs, its leaf sources hold what llama.cpp set (inputs) or what
            # earlier steps left (the KV cache): snapshot them, keyed by where they are read.
            k = len(rec.nodes)
            slots = [(f"s{j}", sp) for j, sp in enumerate(s.src) if sp]
            slots += [(f"r{j}", self.g.tensor(sp).view_src) for j, sp in enumerate(s.src) if sp]
            slots.append(("v", s.view_src))
            for slot, p in slots:
                if p and self.g.op_names[self.g.tensor(p).op] == "NONE" and (k, slot) not in rec.leaf_reads:
                    if self.g.tensor(p).name.decode("utf-8", "replace") not in self.weight_names:
                        rec.leaf_reads[k, slot] = read_tensor_bytes(self.g, p)
            return True
        rec.nodes.append((s.name.decode("utf-8", "replace"), read_tensor_bytes(self.g, t)))
        return True

    def decode(self, tokens: list[int], pos0: int, n_outputs: int = 1, record: bool = False) -> Recording | None:
        """Run one batch through llama_decode; outputs for the last n_outputs tokens."""
        ll = self.ll
        n = len(tokens)
        # llama.cpp asserts (aborts the process) on these; refuse them here with a clear error
        if not 1 <= n <= self.opts.n_batch:
            raise GgcError(f"a batch of {n} tokens does not fit n_batch={self.opts.n_batch}")
        if pos0 + n > self.opts.n_ctx:
            raise GgcError(f"positions {pos0}..{pos0 + n - 1} do not fit the context of {self.opts.n_ctx} cells")
        if not 1 <= n_outputs <= n:
            raise GgcError(f"n_outputs must be in 1..{n}, got {n_outputs}")
        batch = ll.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = pos0 + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if i >= n - n_outputs else 0
            self.recording = Recording() if record else None
            rc = ll.llama_decode(self.ctx, batch)
            if rc != 0:
                raise GgcError(f"llama_decode failed with status {rc}")
            return self.recording
        finally:
            self.recording = None
            ll.llama_batch_free(batch)

    def logits(self, i: int = -1) -> list[float]:
        n_vocab = self.ll.llama_vocab_n_tokens(self.vocab)
        p = self.ll.llama_get_logits_ith(self.ctx, i)
        return [p[k] for k in range(n_vocab)]


@C.CFUNCTYPE(None, C.c_int, C.c_char_p, C.c_void_p)
def _quiet_log(level: int, text: bytes, _ud: int) -> None:
    if os.environ.get("GGC_DEBUG"):
        print(text.decode(errors="replace"), end="", file=sys.stderr)


def quiet_llama_logs() -> None:
    """Send llama.cpp's and ggml's log to nowhere (or stderr with GGC_DEBUG=1): ggc reports its own errors."""
    import llama_cpp.llama_cpp as ll

    ll.llama_log_set(_quiet_log, None)
