"""Tiny random-weight GGUF models that the real llama.cpp loads and runs.

The models are small (a few MB) but shaped like the real architectures: same tensor names, same metadata keys, GQA,
biases, q/k norms, sandwich norms, sliding-window attention and experts where the arch has them. Every weight row is
a multiple of 256 long so that K-quants apply to every matrix instead of falling back to another type.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

ARCHS: tuple[str, ...] = ("llama", "qwen2", "gemma3", "qwen3moe")

# Bump whenever the generated models change, so that cached files are regenerated.
MODEL_VERSION = 1

FTYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
}


@dataclass(frozen=True)
class ArchSpec:
    """Hyperparameters of one tiny model."""

    arch: str
    n_embd: int = 256
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 512
    n_ctx_train: int = 4096
    rms_eps: float = 1e-5
    rope_freq_base: float = 10000.0
    tied_output: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    post_norms: bool = False  # gemma's sandwich norms around attention and ffn
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    sliding_window: int = 0
    swa_pattern: int = 0  # every swa_pattern-th layer is global, the others use the sliding window
    rope_freq_base_swa: float = 0.0
    embd_std: float = 0.125
    output_norm_scale: float = 1.0


SPECS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama"),
    # Tied output: the current token's embedding stays in the residual and boosts its own logit, which makes greedy
    # decoding repeat it. Small embeddings with a large final norm (as in trained tied models) keep that boost small.
    "qwen2": ArchSpec(
        "qwen2",
        rms_eps=1e-6,
        rope_freq_base=1e6,
        tied_output=True,
        qkv_bias=True,
        embd_std=0.0125,
        output_norm_scale=10.0,
    ),
    "gemma3": ArchSpec(
        "gemma3",
        rms_eps=1e-6,
        rope_freq_base=1e6,
        qk_norm=True,
        post_norms=True,
        sliding_window=32,
        swa_pattern=2,
        rope_freq_base_swa=10000.0,
        embd_std=1 / 16,  # gemma scales its input by sqrt(n_embd)
    ),
    "qwen3moe": ArchSpec(
        "qwen3moe",
        rms_eps=1e-6,
        rope_freq_base=1e6,
        qk_norm=True,
        n_expert=4,
        n_expert_used=2,
        n_ff_exp=256,
    ),
}


# ---------------------------------------------------------------------------------------------------------------------
# vocabulary

SPM_SPACE = "\u2581"  # sentencepiece's word-boundary marker "▁"
TOKEN_UNK, TOKEN_BOS, TOKEN_EOS = 0, 1, 2

_WORDS = (
    "the of and to in is was that for it with as his on be at by had are but from not this have they which one you "
    "were her all she there would their we him been has when who will more no if out so said what up its about into "
    "than can time two like man day world good work life old year hello dog cat sun"
).split()
_CAPITALIZED = ("The", "Hello", "It", "This", "Once", "In", "He", "She", "We", "They", "What", "How", "A", "I")
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()"


def build_vocab(n_vocab: int | None = None) -> tuple[list[str], list[float], list[int]]:
    """An SPM vocab: specials, 256 byte-fallback tokens, single characters, then "▁word" prefix chains.

    llama.cpp's SPM tokenizer only merges adjacent symbols whose concatenation is itself a token, so every prefix of
    each "▁word" is a token: that gives each word a merge path from its characters up to the whole word.
    n_vocab pads the vocab with "▁<number>" pieces to exactly that size (real models' vocab sizes).
    """
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256

    pieces: dict[str, None] = dict.fromkeys([SPM_SPACE, *_CHARS])
    for word in (*_WORDS, *_CAPITALIZED):
        text = SPM_SPACE + word
        pieces.update(dict.fromkeys(text[:n] for n in range(2, len(text) + 1)))
    if n_vocab is not None:
        n_pad = n_vocab - len(tokens) - len(pieces)
        if n_pad < 0:
            raise ValueError(f"n_vocab {n_vocab} is below the {len(tokens) + len(pieces)} base tokens")
        # Words are letters only, so "▁<digits>" never collides with them.
        pieces.update(dict.fromkeys(f"{SPM_SPACE}{i}" for i in range(n_pad)))
    tokens += list(pieces)
    types += [gguf.TokenType.NORMAL] * len(pieces)

    # Specials and bytes score 0 like in real llama vocabs; pieces get decreasing log-prob-like scores.
    n_fixed = len(tokens) - len(pieces)
    scores = [0.0] * n_fixed + [-float(i) for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


# ---------------------------------------------------------------------------------------------------------------------
# weights


class _Weights:
    """Draws tensors from one seeded generator and stores them in writer order."""

    def __init__(self, seed: int, arch: str, wtype: gguf.GGMLQuantizationType) -> None:
        # Mix the arch into the seed so that the archs do not share weights.
        self.rng = np.random.default_rng([seed, zlib.crc32(arch.encode())])
        self.dtype = np.float16 if wtype == gguf.GGMLQuantizationType.F16 else np.float32
        self.tensors: dict[str, np.ndarray] = {}

    def matrix(self, name: str, *shape: int, std: float | None = None) -> None:
        """A weight in numpy order (ne[n-1], ..., ne[0]); std 1/sqrt(fan_in) keeps activations near unit scale."""
        std = std if std is not None else shape[-1] ** -0.5
        self.tensors[name] = (self.rng.standard_normal(shape, dtype=np.float32) * std).astype(self.dtype)

    def norm(self, name: str, n: int, scale: float = 1.0) -> None:
        # Not all ones, so that a norm whose weight is dropped changes the result.
        self.tensors[name] = scale * (1.0 + 0.1 * self.rng.standard_normal(n, dtype=np.float32))

    def vector(self, name: str, n: int, std: float = 0.1) -> None:
        self.tensors[name] = std * self.rng.standard_normal(n, dtype=np.float32)

    def f32_matrix(self, name: str, *shape: int) -> None:
        self.tensors[name] = self.rng.standard_normal(shape, dtype=np.float32) * shape[-1] ** -0.5


def _attention(w: _Weights, s: ArchSpec, i: int) -> None:
    p = f"blk.{i}"
    n_q, n_kv = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    w.norm(f"{p}.attn_norm.weight", s.n_embd)
    w.matrix(f"{p}.attn_q.weight", n_q, s.n_embd)
    w.matrix(f"{p}.attn_k.weight", n_kv, s.n_embd)
    w.matrix(f"{p}.attn_v.weight", n_kv, s.n_embd)
    if s.qkv_bias:
        w.vector(f"{p}.attn_q.bias", n_q)
        w.vector(f"{p}.attn_k.bias", n_kv)
        w.vector(f"{p}.attn_v.bias", n_kv)
    if s.qk_norm:
        w.norm(f"{p}.attn_q_norm.weight", s.head_dim)
        w.norm(f"{p}.attn_k_norm.weight", s.head_dim)
    w.matrix(f"{p}.attn_output.weight", s.n_embd, n_q)
    if s.post_norms:
        w.norm(f"{p}.post_attention_norm.weight", s.n_embd)


def _ffn(w: _Weights, s: ArchSpec, i: int) -> None:
    p = f"blk.{i}"
    w.norm(f"{p}.ffn_norm.weight", s.n_embd)
    if s.n_expert:
        # The router stays f32 as in converted HF models; llama.cpp's quantizer never quantizes it either.
        w.f32_matrix(f"{p}.ffn_gate_inp.weight", s.n_expert, s.n_embd)
        w.matrix(f"{p}.ffn_gate_exps.weight", s.n_expert, s.n_ff_exp, s.n_embd)
        w.matrix(f"{p}.ffn_up_exps.weight", s.n_expert, s.n_ff_exp, s.n_embd)
        w.matrix(f"{p}.ffn_down_exps.weight", s.n_expert, s.n_embd, s.n_ff_exp)
    else:
        w.matrix(f"{p}.ffn_gate.weight", s.n_ff, s.n_embd)
        w.matrix(f"{p}.ffn_up.weight", s.n_ff, s.n_embd)
        w.matrix(f"{p}.ffn_down.weight", s.n_embd, s.n_ff)
    if s.post_norms:
        w.norm(f"{p}.post_ffw_norm.weight", s.n_embd)


def build_weights(s: ArchSpec, n_vocab: int, seed: int, wtype: gguf.GGMLQuantizationType) -> dict[str, np.ndarray]:
    w = _Weights(seed, s.arch, wtype)
    w.matrix("token_embd.weight", n_vocab, s.n_embd, std=s.embd_std)
    for i in range(s.n_layer):
        _attention(w, s, i)
        _ffn(w, s, i)
    w.norm("output_norm.weight", s.n_embd, scale=s.output_norm_scale)
    if not s.tied_output:
        # std 1/8 gives logits of std ~2: peaked enough that greedy decoding has clear winners.
        w.matrix("output.weight", n_vocab, s.n_embd, std=0.125)
    return w.tensors


# ---------------------------------------------------------------------------------------------------------------------
# metadata


def _add_hparams(w: gguf.GGUFWriter, s: ArchSpec, n_vocab: int) -> None:
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_rope_dimension_count(s.head_dim)
    w.add_rope_freq_base(s.rope_freq_base)
    w.add_layer_norm_rms_eps(s.rms_eps)
    w.add_vocab_size(n_vocab)
    if s.n_expert:
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_feed_forward_length(s.n_ff_exp)
    if s.sliding_window:
        w.add_sliding_window(s.sliding_window)
        w.add_sliding_window_pattern(s.swa_pattern)
        w.add_rope_freq_base_swa(s.rope_freq_base_swa)


def _add_tokenizer(w: gguf.GGUFWriter, tokens: list[str], scores: list[float], types: list[int]) -> None:
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(TOKEN_UNK)
    w.add_bos_token_id(TOKEN_BOS)
    w.add_eos_token_id(TOKEN_EOS)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def atomic_target(path: Path) -> Path:
    """A unique temporary sibling of path; os.replace it onto path once complete so readers never see half a file."""
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def write_tiny_model(path: str | Path, arch: str = "llama", *, seed: int = 0, ftype: str = "f16") -> Path:
    """Write a tiny random-weight GGUF model of the given llama.cpp architecture to path.

    2D/3D weights are stored in ftype ("f16" or "f32"); norms, biases and the MoE router in f32.
    The output is a deterministic function of (arch, seed, ftype).
    """
    if arch not in SPECS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if ftype not in FTYPES:
        raise ValueError(f"unknown ftype {ftype!r}; expected one of {tuple(FTYPES)}")
    spec, (wtype, file_type) = SPECS[arch], FTYPES[ftype]
    tokens, scores, types = build_vocab()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_target(path)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_name(f"ggc-tiny-{arch}")
        writer.add_file_type(int(file_type))
        _add_hparams(writer, spec, len(tokens))
        _add_tokenizer(writer, tokens, scores, types)
        for name, data in build_weights(spec, len(tokens), seed, wtype).items():
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
