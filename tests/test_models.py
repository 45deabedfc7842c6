"""Tiny GGUF models: their layout, and that the real llama.cpp loads, quantizes and runs them."""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import numpy as np
import pytest

from ggc.models.tiny import ARCHS, build_vocab, write_tiny_model

QUANT_NAMES = ("f16", "q8_0", "q4_0", "q4_k_m")
QUANT_TENSOR_TYPE = {
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
    "q4_k_m": gguf.GGMLQuantizationType.Q4_K,
}

LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm")
DENSE_FFN = ("ffn_gate", "ffn_up", "ffn_down")
EXTRA_LAYER_TENSORS = {
    "llama": DENSE_FFN,
    "qwen2": (*DENSE_FFN, "attn_q.bias", "attn_k.bias", "attn_v.bias"),
    "gemma3": (*DENSE_FFN, "attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"),
    "qwen3moe": ("attn_q_norm", "attn_k_norm", "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"),
}
TIED = {"qwen2"}


def expected_tensor_names(arch: str, n_layer: int = 2) -> set[str]:
    names = {"token_embd.weight", "output_norm.weight"} | (set() if arch in TIED else {"output.weight"})
    for i in range(n_layer):
        for t in (*LAYER_TENSORS, *EXTRA_LAYER_TENSORS[arch]):
            names.add(f"blk.{i}.{t}" if t.endswith(".bias") else f"blk.{i}.{t}.weight")
    return names


def kv(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


@pytest.mark.parametrize("arch", ARCHS)
def test_write_and_read_back(tmp_path: Path, arch: str) -> None:
    reader = gguf.GGUFReader(write_tiny_model(tmp_path / "m.gguf", arch))
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == expected_tensor_names(arch)
    assert kv(reader, "general.architecture") == arch
    assert kv(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert kv(reader, f"{arch}.block_count") == 2
    assert kv(reader, f"{arch}.attention.head_count") > kv(reader, f"{arch}.attention.head_count_kv")
    assert kv(reader, "tokenizer.ggml.model") == "llama"
    tokens = kv(reader, "tokenizer.ggml.tokens")
    assert 300 <= len(tokens) <= 600 and "<0x0A>" in tokens
    for name, t in tensors.items():
        # llama.cpp's quantizer leaves the MoE router in f32, so it is written in f32 too
        want_f16 = len(t.shape) >= 2 and "ffn_gate_inp" not in name
        assert t.tensor_type == (gguf.GGMLQuantizationType.F16 if want_f16 else gguf.GGMLQuantizationType.F32), name
        assert t.shape[0] % 256 == 0 or len(t.shape) == 1, name  # K-quants need rows that are multiples of 256
        assert np.isfinite(t.data).all(), name
    if arch == "qwen3moe":
        assert kv(reader, "qwen3moe.expert_count") == 4 and kv(reader, "qwen3moe.expert_used_count") == 2
        assert list(tensors["blk.0.ffn_up_exps.weight"].shape) == [256, 256, 4]
    if arch == "gemma3":
        assert kv(reader, "gemma3.attention.sliding_window") > 0


def test_deterministic_and_f32(tmp_path: Path) -> None:
    a = write_tiny_model(tmp_path / "a.gguf", "llama", seed=3).read_bytes()
    assert write_tiny_model(tmp_path / "b.gguf", "llama", seed=3).read_bytes() == a
    assert write_tiny_model(tmp_path / "c.gguf", "llama", seed=4).read_bytes() != a
    reader = gguf.GGUFReader(write_tiny_model(tmp_path / "d.gguf", "llama", ftype="f32"))
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}
    assert not list(tmp_path.glob("*.tmp"))


def test_vocab_is_well_formed() -> None:
    tokens, scores, types = build_vocab()
    assert len(tokens) == len(set(tokens)) == len(scores) == len(types)
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert sum(t == gguf.TokenType.BYTE for t in types) == 256


# ---------------------------------------------------------------------------------------------------------------------
# real llama.cpp


@pytest.fixture(scope="module")
def llama() -> object:
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = llama_cpp.llama_cpp
    lib.llama_backend_init()
    return lib


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ggc-models")


def token_piece(lib, vocab, token: int) -> str:
    buf = ctypes.create_string_buffer(64)
    n = lib.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[:n].decode()


def run_prompt(lib, path: Path, text: bytes, n_gen: int = 3) -> tuple[list[str], list[np.ndarray]]:
    """Tokenize text, evaluate it and a few greedy tokens; return the prompt's pieces and the logits of each step."""
    mparams = lib.llama_model_default_params()
    mparams.use_extra_bufts = False  # CPU weight repacking crashes on tiny Q4_0 models on AMX machines
    model = lib.llama_model_load_from_file(str(path).encode(), mparams)
    assert model, f"llama.cpp failed to load {path}"
    cparams = lib.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_threads, cparams.n_threads_batch = 256, 256, 2, 2
    ctx = lib.llama_init_from_model(model, cparams)
    try:
        vocab = lib.llama_model_get_vocab(model)
        n_vocab = lib.llama_vocab_n_tokens(vocab)
        tokens = (lib.llama_token * 64)()
        n = lib.llama_tokenize(vocab, text, len(text), tokens, 64, True, False)
        assert n > 1
        pieces = [token_piece(lib, vocab, tokens[i]) for i in range(n)]
        logits = []
        batch = lib.llama_batch_get_one(tokens, n)
        for _ in range(n_gen):
            assert lib.llama_decode(ctx, batch) == 0
            logits.append(np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy())
            tokens[0] = int(logits[-1].argmax())
            batch = lib.llama_batch_get_one(tokens, 1)
        return pieces, logits
    finally:
        lib.llama_free(ctx)
        lib.llama_model_free(model)


@pytest.mark.parametrize("quant", QUANT_NAMES)
@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_runs(llama, cache_dir: Path, arch: str, quant: str) -> None:
    from ggc.models.quantize import tiny_model

    # longer than gemma3's sliding window of 32 tokens
    text = "Hello world, the dog was in the sun. Once upon a time there was a cat, and it said: what is this? 42 (yes)"
    pieces, logits = run_prompt(llama, tiny_model(arch, quant, cache_dir), text.encode())
    assert len(pieces) > 32
    assert "".join(pieces) == " " + text  # SPM adds a leading space; <s> is an empty piece
    assert pieces[1:3] == [" Hello", " world"]
    for step in logits:
        assert np.isfinite(step).all() and step.std() > 0.5


@pytest.mark.parametrize("quant", ("q8_0", "q4_0", "q4_k_m"))
@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_tensor_types(llama, cache_dir: Path, arch: str, quant: str) -> None:
    from ggc.models.quantize import tiny_model

    reader = gguf.GGUFReader(tiny_model(arch, quant, cache_dir))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert set(types) == expected_tensor_names(arch)
    quantized = [name for name, t in types.items() if t == QUANT_TENSOR_TYPE[quant]]
    # every layer's q projection has the plain target type in all three quantizations
    assert {"blk.0.attn_q.weight", "blk.1.attn_q.weight"} <= set(quantized)
    assert gguf.GGMLQuantizationType.F16 not in types.values()
    if arch == "qwen3moe":
        assert types["blk.0.ffn_up_exps.weight"] == QUANT_TENSOR_TYPE[quant]


def test_tiny_model_cache(llama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ggc.models.quantize import tiny_model

    monkeypatch.setenv("GGC_CACHE", str(tmp_path))
    path = tiny_model("llama", "q8_0")
    assert path.parent == tmp_path and path.is_file()
    mtime = path.stat().st_mtime_ns
    assert tiny_model("llama", "q8_0") == path and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, tiny_model("llama").name])
    with pytest.raises(ValueError):
        tiny_model("llama", "q3_k_xl")
