"""Text generation with a generated program: ggc.Model("m.gguf").generate("prompt", n=64).

llama.cpp (through llama-cpp-python) provides the tokenizer and the two graphs, captured once: a
prefill graph for a batch of B tokens and a decode graph for one. Both are compiled into one
program on one arena, so the weights are loaded once and the KV cache is shared state. The
program is cached on disk under a hash of the graphs and the compiler, so a second start only
loads it. A prompt runs in chunks of B tokens, and the rest one token at a time.

With ranks > 1 the graphs are partitioned tensor-parallel (compiler/partition.py) and every rank,
one process each (runtime/ranks.py: under mpirun for C, one a GPU for CUDA), makes the same Model:
each loads its slice of the weights, and all ranks get the same logits (every all-reduce gives
every rank the same bits: MPI's sums in rank order, NCCL's each element once), so they sample the
same tokens.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..errors import GgcError
from .inputs import InputFiller, Swa
from .sampling import Sampler

if TYPE_CHECKING:
    from ..runtime.cprogram import InputBlock

Progress = Callable[[str], None]
TARGETS = ("c", "cuda")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("GGC_CACHE", Path.home() / ".cache" / "ggc"))


def _compiler_fingerprint() -> str:
    """Everything of ggc that shapes a generated program."""
    from ..backends.c.abi import KERNEL_DIR
    from ..backends.c.emit import RUNTIME_DIR

    h = hashlib.sha256(__version__.encode())
    pkg = Path(__file__).parents[1]
    cuda = pkg / "backends" / "cuda"
    for d in (KERNEL_DIR, RUNTIME_DIR, pkg / "backends" / "c", pkg / "compiler", pkg / "runtime",
              cuda, cuda / "kernels", cuda / "runtime"):
        for p in sorted(d.iterdir()):
            if p.suffix in (".c", ".h", ".py", ".cu", ".cuh"):
                h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@dataclass
class Stats:
    prompt_tokens: int = 0
    prompt_s: float = 0.0
    gen_tokens: int = 0
    gen_s: float = 0.0
    target: str = "c"
    start_s: float = 0.0
    cached: bool = False

    def line(self) -> str:
        pp = self.prompt_tokens / self.prompt_s if self.prompt_s else 0.0
        tg = self.gen_tokens / self.gen_s if self.gen_s else 0.0
        return (f"prompt {self.prompt_tokens} tokens at {pp:.1f} tok/s, generation {self.gen_tokens} tokens at "
                f"{tg:.1f} tok/s, target {self.target}")


@dataclass
class Generation:
    tokens: list[int]
    text: str
    stats: Stats = field(default_factory=Stats)


class Model:
    def __init__(self, path: str | Path, target: str = "c", ctx: int = 4096, batch: int = 32,
                 threads: int | None = None, progress: Progress | None = _stderr, ranks: int = 1,
                 load: bool = True, partial_sums: bool = False) -> None:
        from ..capture.llama import LlamaSession, SessionOptions
        from ..formats.gguf_file import read_gguf

        t0 = time.perf_counter()
        self.path = Path(path)
        self.progress = progress or (lambda _msg: None)
        if target not in TARGETS:
            raise GgcError(f"unknown target {target!r} (targets: {', '.join(TARGETS)})")
        target = self._pick_target(target)
        self.target = target
        if target == "cuda" and ranks > 1:  # before minutes of compiling
            from ..runtime.ranks import require_gpus

            require_gpus(ranks)
        self.ranks = ranks
        if ctx < 1 or batch < 1 or batch > ctx:
            raise GgcError(f"need 1 <= --batch ({batch}) <= --ctx ({ctx})")
        gf = read_gguf(self.path)  # a clear error for a missing or non-GGUF file, before llama.cpp sees it
        self.ctx, self.batch = ctx, batch
        self.progress(f"ggc: capturing llama.cpp's graphs for {self.path.name} (ctx {ctx}, batch {batch})")
        with LlamaSession(self.path, SessionOptions(n_ctx=ctx, n_batch=batch)) as s:
            self._vocab_from(s)
            prefill, _ = s.capture(batch, 1)
            decode, _ = s.capture(1, 1) if batch > 1 else (prefill, None)
        self.graphs = [prefill, decode]
        if ranks > 1:
            from ..compiler.partition import partition

            # partial_sums: Megatron's scheme (an all-reduce after the attention output and the FFN down
            # projection); otherwise every value exactly as on one rank, split results gathered
            self.graphs = [p.graph for p in partition(self.graphs, ranks, exact=not partial_sums)]
        n_layer = max((int(t.name[9:]) + 1 for t in prefill.leafs if t.name.startswith("cache_k_l")), default=0)
        swa = Swa.from_gguf(gf, n_layer)
        self.fillers = [InputFiller(g, swa) for g in self.graphs]
        self._input_blocks: dict[int, InputBlock] = {}
        self._logits = [next(t for t in g.outputs() if t.name == "result_output") for g in self.graphs]
        # the decode graph's token input: pipelined greedy decoding feeds it on the device
        self._token_input = next((t for t in self.graphs[1].leafs if t.name == "inp_tokens"
                                  and t.type.name == "i32" and t.nelements == 1), None)
        self.program, cached = self._build(load)
        self.stats = Stats(target=target, start_s=time.perf_counter() - t0, cached=cached)
        if not load:  # compiled and built only (for the ranks that mpirun starts next)
            return
        self.program.load_weights(self.path)
        if threads:
            self.program.set_threads(threads)
        self.n_past = 0
        self._pending = 0  # greedy steps queued and not collected (_stream_greedy)
        self.stats.start_s = time.perf_counter() - t0

    # ---- set-up
    def _pick_target(self, target: str) -> str:
        """cuda where nvcc and a GPU are both there; otherwise C, with a one-line notice."""
        if target != "cuda":
            return target
        from ..backends.cuda.abi import driver_devices, find_nvcc

        if find_nvcc() is None:
            self.progress("ggc: nvcc not found (install the CUDA toolkit or set NVCC); using the C target")
            return "c"
        if not driver_devices():
            self.progress("ggc: no CUDA GPU found; using the C target")
            return "c"
        return target

    def _vocab_from(self, s) -> None:  # noqa: ANN001 - a LlamaSession
        """Keep the tokenizer: llama.cpp's vocabulary stays loaded (vocab_only) for the whole run."""
        import llama_cpp.llama_cpp as ll

        p = ll.llama_model_default_params()
        p.vocab_only = True
        self._ll = ll
        self._vocab_model = ll.llama_model_load_from_file(str(self.path).encode(), p)
        if not self._vocab_model:
            raise GgcError(f"{self.path}: llama.cpp could not load its vocabulary")
        self.vocab = ll.llama_model_get_vocab(self._vocab_model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)

    def _build(self, load: bool = True):  # noqa: ANN202 - CProgram
        from ..formats import ggraph
        from ..runtime.cprogram import CProgram

        h = hashlib.sha256(_compiler_fingerprint().encode() + self.target.encode())
        for g in self.graphs:
            h.update(ggraph.write(g).encode())
        key = h.hexdigest()[:20]
        out = cache_root() / "programs" / f"{self.path.stem}-{self.target}-{key}"
        out.parent.mkdir(parents=True, exist_ok=True)
        # one compiler at a time per program: the ranks of one run, or two runs, start together
        with open(out.parent / f".{out.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            compiled, cached = self._compile(out)
        # outside the lock: with MPI, creating the program waits for every rank
        return (CProgram(compiled) if load else None), cached

    def _compile(self, out: Path):  # noqa: ANN202 - CompiledC
        from ..backends.c.emit import compile_c
        from ..runtime.cprogram import build

        cached = (out / "libmodel.so").exists()
        names = ["prefill", "decode"]
        if cached:
            self.progress(f"ggc: using the compiled program in {out}")
        if self.target == "cuda":
            from ..backends.cuda.abi import arch, build_library
            from ..backends.cuda.emit import compile_cuda

            if not cached:
                ranks = f" for {self.ranks} GPUs" if self.ranks > 1 else ""
                self.progress(f"ggc: compiling prefill and decode graphs to CUDA ({arch()}){ranks}")
            compiled = compile_cuda(self.graphs, out, source=self.path.name, graph_names=names,
                                    archs=(arch().removeprefix("sm_"),), reuse_existing=cached)
            if not cached:
                self.progress("ggc: building the CUDA kernel library with nvcc (once per ggc version and GPU; "
                              "minutes the first time)")
                build_library()
                self.progress("ggc: building the program with make and nvcc")
        else:
            if not cached:
                ranks = f" for {self.ranks} ranks" if self.ranks > 1 else ""
                self.progress(f"ggc: compiling prefill and decode graphs to C{ranks}")
            compiled = compile_c(self.graphs, out, source=self.path.name, graph_names=names, reuse_existing=cached)
            if not cached:
                self.progress("ggc: building with make and the C compiler")
        build(compiled)  # under the lock: a no-op when built
        return compiled, cached

    def close(self) -> None:
        if getattr(self, "program", None):
            self.program.close()
            self.program = None
        if getattr(self, "_vocab_model", None):
            self._ll.llama_model_free(self._vocab_model)
            self._vocab_model = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- tokens
    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        import ctypes as C

        raw = text.encode()
        n = len(raw) + 16
        toks = (self._ll.llama_token * n)()
        k = self._ll.llama_tokenize(self.vocab, raw, len(raw), toks, n, add_bos, True)
        if k < 0:
            raise GgcError("tokenization failed")
        del C
        return list(toks[:k])

    def piece(self, token: int) -> bytes:
        import ctypes as C

        buf = C.create_string_buffer(256)
        n = self._ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[: max(n, 0)]

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._ll.llama_vocab_is_eog(self.vocab, token))

    # ---- evaluation
    def reset(self) -> None:
        while self._pending:  # greedy steps queued ahead by a stream that was not read to its end
            self._collect()
        self.program.reset_state()
        self.n_past = 0

    def _collect(self) -> int:
        """The token of the oldest queued greedy step."""
        self._pending -= 1
        return self.program.argmax_result()

    def _prepare(self, gi: int, tokens: list[int]) -> None:
        """Write graph gi's inputs for tokens at the current position (queued in order on the GPU)."""
        block = self.input_block(gi)
        self.fillers[gi].fill(block.arrays, tokens, self.n_past)
        block.write()
        # attention reads only the cells in use (the program rounds n_kv up as llama.cpp pads it)
        self.program.set_n_kv(self.n_past + len(tokens))

    def _run(self, gi: int, tokens: list[int], greedy: bool = False) -> int | None:
        """One step of graph gi over tokens (its logits stay in the arena); greedy: also the argmax
        of the logits, taken in the same call."""
        self._prepare(gi, tokens)
        tok = None
        if greedy:
            tok = self.program.argmax(self._logits[gi], graph=gi, run=True)
        else:
            self.program.run(graph=gi)
        self.n_past += len(tokens)
        return tok

    def input_block(self, gi: int) -> InputBlock:
        """Graph gi's inputs as host arrays, made once and refilled every step."""
        if gi not in self._input_blocks:
            self._input_blocks[gi] = self.program.input_block(gi, self.fillers[gi].dtypes)
        return self._input_blocks[gi]

    def eval(self, tokens: list[int]) -> np.ndarray:
        """Append tokens to the context; the logits after the last one."""
        gi, _ = self._advance(tokens)
        return self.program.get_f32(self._logits[gi], graph=gi)

    def eval_greedy(self, tokens: list[int]) -> int:
        """Append tokens to the context; the most likely next token (argmax of the logits, computed
        where they are: on the GPU only an index comes back)."""
        _, tok = self._advance(tokens, greedy=True)
        assert tok is not None
        return tok

    def _advance(self, tokens: list[int], greedy: bool = False) -> tuple[int, int | None]:
        """Run the steps that append tokens (prefill chunks, then single tokens): the last step's graph,
        and with greedy its argmax."""
        steps = self._steps(tokens)
        tok = None
        for k, (gi, toks) in enumerate(steps):
            tok = self._run(gi, toks, greedy and k == len(steps) - 1)
        return steps[-1][0], tok

    def _steps(self, tokens: list[int]) -> list[tuple[int, list[int]]]:
        """(graph, tokens) of each step that appends tokens: prefill chunks of B, then single tokens."""
        if not tokens:
            raise GgcError("eval needs at least one token")
        if self.n_past + len(tokens) > self.ctx:
            raise GgcError(f"{self.n_past + len(tokens)} tokens do not fit the context of {self.ctx}")
        n_chunks = (len(tokens) // self.batch) if self.batch > 1 else 0
        steps = [(0, tokens[i * self.batch : (i + 1) * self.batch]) for i in range(n_chunks)]
        return steps + [(1, [tok]) for tok in tokens[n_chunks * self.batch :]]

    def _queue(self, gi: int, tokens: list[int], feed: bool) -> None:
        """Queue a greedy step (argmax_result collects its token); feed: its one token is the one the
        step queued before it picks, passed on the device."""
        self._prepare(gi, tokens)
        self.program.queue_argmax(self._logits[gi], graph=gi, feed=self._token_input if feed else None)
        self._pending += 1
        self.n_past += len(tokens)

    def _stream_greedy(self, toks: list[int], n: int) -> Iterator[int]:
        """Greedy tokens with the host one step ahead of the GPU: step k + 1 is queued, its token fed
        from step k's argmax on the device, before step k's token is read back, so the host's work
        (inputs, launch, Python) overlaps the GPU's instead of adding to it. A step queued past the
        end (end-of-generation, n reached) is collected and dropped: it only wrote a KV cell past
        n_past, which nothing reads."""
        steps = self._steps(toks)
        for gi, part in steps[:-1] if n > 0 else steps:
            self._run(gi, part)
        if n <= 0:
            return
        self._queue(*steps[-1], feed=False)
        for i in range(n):
            ahead = i + 1 < n and self.n_past < self.ctx
            if ahead:
                self._queue(1, [0], feed=True)
            tok = self._collect()
            stop = self.is_eog(tok)
            if stop and ahead:
                self._collect()
                self.n_past -= 1
            yield tok
            if stop or not ahead:
                return

    def stream(self, prompt: str | list[int], n: int = 64, sampler: Sampler | None = None) -> Iterator[int]:
        """Yield generated tokens one by one (stops at an end-of-generation token)."""
        sampler = sampler or Sampler()
        toks = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if len(toks) >= self.ctx:
            raise GgcError(f"the prompt has {len(toks)} tokens, more than the context of {self.ctx} allows")
        self.reset()
        st = self.stats
        t0 = time.perf_counter()
        # greedy: only the argmax comes back from the program, and the host runs a step ahead
        if sampler.temperature <= 0.0 and self._token_input is not None:
            tokens = self._stream_greedy(toks, n)
        else:
            tokens = self._stream_sampled(toks, n, sampler)
        st.gen_tokens, st.gen_s = 0, 0.0
        t1 = None
        for tok in tokens:
            if t1 is None:  # the first token came from the prompt's last step
                st.prompt_tokens, st.prompt_s = len(toks), time.perf_counter() - t0
                t1 = time.perf_counter()
            st.gen_tokens += 1
            st.gen_s = time.perf_counter() - t1
            yield tok
        if t1 is not None:
            st.gen_s = time.perf_counter() - t1

    def _stream_sampled(self, toks: list[int], n: int, sampler: Sampler) -> Iterator[int]:
        """Tokens one step at a time: each step's logits (or argmax) back before the next starts."""
        greedy = sampler.temperature <= 0.0

        def step(tokens: list[int]) -> int:
            return self.eval_greedy(tokens) if greedy else sampler(self.eval(tokens))

        tok = step(toks)
        for i in range(n):
            yield tok
            if self.is_eog(tok) or self.n_past >= self.ctx or i + 1 == n:
                return
            tok = step([tok])

    def generate(self, prompt: str | list[int], n: int = 64, sampler: Sampler | None = None,
                 on_token: Callable[[int], None] | None = None) -> Generation:
        out = []
        for tok in self.stream(prompt, n, sampler):
            out.append(tok)
            if on_token:
                on_token(tok)
        return Generation(out, self.detokenize(out), self.stats)
