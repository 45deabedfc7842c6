"""The tensor-parallel partition pass: which tensors split, derived from the graph, and the rank's
graph it writes (shapes, views, ALL_REDUCE nodes, weight slices)."""

from __future__ import annotations

import pytest

from ggc.capture.llama import LlamaSession, SessionOptions
from ggc.compiler.partition import partition, view_split
from ggc.errors import GgcError
from ggc.formats import ggraph
from ggc.ir.graph import GgufData, Graph
from ggc.models.quantize import tiny_model
from ggc.models.tiny import ARCHS


def _graphs(arch: str, quant: str) -> list[Graph]:
    with LlamaSession(tiny_model(arch, quant), SessionOptions(n_ctx=256, n_batch=8)) as s:
        return [s.capture(8, 1)[0], s.capture(1, 1)[0]]


# ---- views of a split root: ne, nb in bytes, f32
def test_heads_of_a_split_row() -> None:
    # [128] split in two, seen as 2 heads of 64: the heads split
    got = view_split((128, 1, 1, 1), (4, 512, 512, 512), 1, 0, 2, (64, 2, 1, 1), (4, 256, 512, 512), 0)
    assert got == (1, (64, 1, 1, 1), (4, 256, 256, 256), 0)


def test_merged_heads_keep_the_split() -> None:
    # [64, 4 heads] split by heads, reshaped to [256]: the row splits in halves
    got = view_split((64, 4, 1, 1), (4, 256, 1024, 1024), 1, 1, 2, (256, 1, 1, 1), (4, 1024, 1024, 1024), 0)
    assert got == (0, (128, 1, 1, 1), (4, 1024 // 2, 1024 // 2, 1024 // 2), 0)


def test_a_cache_seen_as_heads_over_cells() -> None:
    # a [128 = 2 heads x 64, 256 cells] f16 cache split along dim 0, seen as [64, 2, 256]
    got = view_split((128, 256, 1, 1), (2, 256, 65536, 65536), 1, 0, 2, (64, 2, 256, 1), (2, 128, 256, 65536), 0)
    assert got == (1, (64, 1, 256, 1), (2, 128, 128, 32768), 0)


@pytest.mark.parametrize("ne, nb, offs", [
    ((64, 1, 1, 1), (4, 256, 256, 256), 0),  # half of the split dim
    ((64, 1, 1, 1), (4, 256, 256, 256), 256),  # the other half: inside one rank
    ((256, 1, 1, 1), (4, 1024, 1024, 1024), 0),  # one dim over both rows: ranks interleave
])
def test_views_that_do_not_see_the_split_are_refused(ne: tuple, nb: tuple, offs: int) -> None:
    assert view_split((128, 2, 1, 1), (4, 512, 1024, 1024), 1, 0, 2, ne, nb, offs) is None


# ---- whole models
def _split(parts) -> dict[str, int]:  # noqa: ANN001
    return parts[1].graph.split_weights()


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "sum"])
@pytest.mark.parametrize("arch", ARCHS)
def test_attention_and_ffn_split_on_every_architecture(arch: str, exact: bool) -> None:
    graphs = _graphs(arch, "f16")
    parts = partition(graphs, 2, exact=exact)
    assert parts[0].graph.split_weights() == parts[1].graph.split_weights()  # prefill and decode agree
    split = _split(parts)
    n_layer = 2
    # exact: every product splits its rows, and what reads a split result whole reads it gathered;
    # sum: the second product of a block splits its columns, and an ALL_REDUCE adds the partial sums
    second = 1 if exact else 0
    ffn = "_exps" if arch == "qwen3moe" else ""
    for i in range(n_layer):
        for w in ("attn_q", "attn_k", "attn_v"):
            assert split[f"blk.{i}.{w}.weight"] == 1, w  # rows: heads
        assert split[f"blk.{i}.attn_output.weight"] == second
        assert split[f"blk.{i}.ffn_gate{ffn}.weight"] == 1 and split[f"blk.{i}.ffn_up{ffn}.weight"] == 1
        assert split[f"blk.{i}.ffn_down{ffn}.weight"] == second
    # what may not split stays whole: the embedding and the norms; in the sum scheme also the output
    # head (a graph output) and the MoE router (a softmax over experts), which exact gathers instead
    assert not any(n.startswith("token_embd") or "norm" in n for n in split)
    if not exact:
        assert not any(n.startswith("output") or "ffn_gate_inp" in n for n in split)
    for part, g in zip(parts, graphs):
        local = part.graph
        n_comm = sum(t.op in ("ALL_REDUCE", "ALL_GATHER") for t in local.nodes)
        assert sum(t.op == ("ALL_GATHER" if exact else "ALL_REDUCE") for t in local.nodes) >= 2 * n_layer
        assert len(local.nodes) >= len(g.nodes) + n_comm
        assert ggraph.write(ggraph.parse(ggraph.write(local))) == ggraph.write(local)
        for t in local.tensors:  # split tensors are half of the captured ones
            cap = part.origin[t.id].tensor
            if part.origin[t.id].split is not None:
                assert t.nelements * 2 == cap.nelements
        # KV caches split by heads
        caches = [t for t in local.leafs if "state" in t.flags]
        assert caches and all(part.origin[t.id].split == 0 for t in caches)


def test_biases_split_with_their_rows() -> None:
    split = _split(partition(_graphs("qwen2", "q8_0"), 2))
    assert all(split[f"blk.0.attn_{x}.bias"] == 0 for x in "qkv")


def test_what_does_not_divide_stays_whole() -> None:
    # q4_K blocks hold 256 values: attention's output projection (256 inputs) cannot split its
    # columns in two, so in the sum scheme attention stays on every rank; the FFN (512) still splits
    split = _split(partition(_graphs("llama", "q4_k_m"), 2, exact=False))
    assert not any("attn" in n for n in split)
    assert split["blk.0.ffn_down.weight"] == 0
    # 3 ranks divide no head count nor the FFN of the tiny model, only its 510-row output head:
    # the layers run whole on each rank
    graphs = _graphs("llama", "f16")
    parts = partition(graphs, 3)
    assert _split(parts) == {"output.weight": 1}
    assert [len(p.graph.nodes) for p in parts] == [len(g.nodes) + 1 for g in graphs]  # one ALL_GATHER


def test_one_rank_is_the_graph_itself_and_a_partitioned_graph_is_refused() -> None:
    graphs = _graphs("llama", "q4_0")
    assert [p.graph for p in partition(graphs, 1)] == graphs
    local = partition(graphs, 2)[0].graph
    with pytest.raises(GgcError, match="already partitioned"):
        partition([local], 2)
    with pytest.raises(GgcError, match="at least 1"):
        partition(graphs, 0)


def test_split_weights_are_written_and_read_back() -> None:
    local = partition(_graphs("llama", "q4_0"), 2)[1].graph
    text = ggraph.write(local)
    assert 'data=gguf:"blk.0.attn_q.weight"[split=1]' in text and "= ALL_GATHER f32" in text
    back = ggraph.parse(text)
    t = back.by_name("blk.0.attn_output.weight")
    assert t is not None and t.data == GgufData("blk.0.attn_output.weight", 1)
