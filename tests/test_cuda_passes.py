"""What the CUDA emitter derives from a graph before any kernel runs (no GPU, no nvcc needed):
norm-headed row groups, src1 conversions shared between matrix products, q4_0 weights regrouped
for aligned loads, and the C loader's regrouping itself."""

from __future__ import annotations

import ctypes
import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ggc.backends.c.abi import op_param_words
from ggc.backends.c.emit import C_FUSION, plan_program
from ggc.backends.cuda.abi import regroup_q4_0, regroup_q6_k
from ggc.backends.cuda.emit import (
    CUDA_FUSION,
    _act_reuse,
    _quantizing_attention,
    _quantizing_norms,
    regrouped_weights,
)
from ggc.compiler.passes import ADD_EPILOGUES, GLU_PAIRS, ROW_HEADS, Fusion, live_nodes, make_groups
from ggc.ir.graph import Graph, Tensor
from ggc.models.quantize import tiny_model


def _decode_graph(arch: str, quant: str) -> Graph:
    from ggc.capture.llama import LlamaSession, SessionOptions

    with LlamaSession(tiny_model(arch, quant), SessionOptions(n_ctx=256, n_batch=8)) as s:
        return s.capture(1, 1)[0]


@pytest.fixture(scope="module")
def llama_q4_0() -> Graph:
    return _decode_graph("llama", "q4_0")


def test_norm_heads_a_row_group(llama_q4_0: Graph) -> None:
    g = llama_q4_0
    live = live_nodes(g)
    plain = make_groups(g, live)
    fused = make_groups(g, live, Fusion(heads=ROW_HEADS))
    rows = [grp for grp in fused if grp.nodes[0].op in CUDA_FUSION.heads and grp.fused]
    # every RMS_NORM of a llama layer (attention and FFN) and the output norm takes its weight's MUL along
    n_norms = sum(1 for t in g.nodes if t.op == "RMS_NORM" and t.id in live)
    assert len(rows) == n_norms > 0
    assert all([t.op for t in grp.nodes] == ["RMS_NORM", "MUL"] for grp in rows)
    assert len(fused) == len(plain) - n_norms
    # without heads nothing starts at a norm
    assert not any(grp.fused and grp.nodes[0].op == "RMS_NORM" for grp in plain)


def test_norm_with_two_readers_stays_alone() -> None:
    from ggc.capture.builder import GraphBuilder

    with GraphBuilder() as b:
        x = b.tensor("f32", (64, 2), "x", input=True)
        w = b.tensor("f32", (64, 1), "w", input=True)
        n = b.op("rms_norm", x, 1e-6)
        y = b.op("mul", n, w)
        z = b.op("add", y, n)  # n is read twice: it must be written, so it cannot hide in a group
        g = b.capture(z)
    groups = make_groups(g, live_nodes(g), Fusion(elementwise=frozenset({"MUL", "ADD"}), heads=ROW_HEADS))
    assert [[t.op for t in grp.nodes] for grp in groups] == [["RMS_NORM"], ["MUL", "ADD"]]


def test_act_reuse_q_k_v_and_gate_up(llama_q4_0: Graph) -> None:
    _, _, plans = plan_program(llama_q4_0, False, Fusion(C_FUSION.elementwise, heads=CUDA_FUSION.heads), None)
    p = plans[0]
    reuse = _act_reuse(p, lambda op: op in ("MUL_MAT", "MUL_MAT_ID", "FLASH_ATTN_EXT"))
    names = sorted(p.groups[i].nodes[0].name.split("-")[0] for i in reuse)
    n_layers = sum(1 for t in llama_q4_0.nodes if t.op == "FLASH_ATTN_EXT")
    # K and V reuse Q's conversion (one ROPE between them uses no work memory), up reuses gate's;
    # Q and gate take theirs from the norm before them, which quantized its row (q4_0 weights dot q8_0)
    assert names.count("Kcur") == names.count("Vcur") == names.count("ffn_up") == n_layers
    assert names.count("Qcur") == names.count("ffn_gate") == n_layers
    # the attention output projection takes its activations from the attention call before it
    assert names.count("attn_out") == n_layers
    assert set(names) - {"result_output"} == {"Kcur", "Vcur", "ffn_up", "Qcur", "ffn_gate", "attn_out"}
    norms, attention = _quantizing_norms(p), _quantizing_attention(p)
    assert {g + 1 for g in norms} <= reuse and all(p.groups[g].nodes[0].op == "RMS_NORM" for g in norms)
    assert {g + 1 for g in attention} <= reuse and len(attention) == n_layers
    assert all(p.groups[g].nodes[0].op == "FLASH_ATTN_EXT" for g in attention)
    # a kernel that writes the work buffer in between breaks the chain (the norms' and attention's rules
    # stand alone)
    assert _act_reuse(p, lambda op: op != "RMS_NORM") == {
        i for i in reuse if p.groups[i - 1].nodes[0].op == "MUL_MAT" or i - 1 in norms | attention}


def test_norms_quantize_only_for_one_row_of_q8_0_products() -> None:
    from ggc.capture.llama import LlamaSession, SessionOptions

    for quant, want in (("f16", False), ("q4_k_m", False), ("q8_0", True)):
        g = _decode_graph("llama", quant)
        p = plan_program(g, False, CUDA_FUSION, None)[2][0]
        assert bool(_quantizing_norms(p)) is want, quant
    with LlamaSession(tiny_model("llama", "q4_0"), SessionOptions(n_ctx=256, n_batch=8)) as s:
        pre = s.capture(8, 1)[0]
    p = plan_program(pre, False, CUDA_FUSION, None)[2][0]
    # a prefill's norms (8 rows) leave conversion to the tensor-core path, except the output norm's one row
    assert all(p.groups[g].nodes[-1].ne[1] == 1 for g in _quantizing_norms(p))


def test_regrouped_weights(llama_q4_0: Graph) -> None:
    _, _, plans = plan_program(llama_q4_0, False, C_FUSION, None)
    names = regrouped_weights(plans)
    mm = {t.src[0].data.name for t in llama_q4_0.nodes if t.op == "MUL_MAT" and t.src[0].type.name == "q4_0"}
    # token_embd (read by GET_ROWS) stays as it is; every q4_0 matrix product weight is regrouped
    assert {n for n, k in names.items() if k == "GGC_TYPE_Q4_0R8"} == mm and "token_embd.weight" not in names
    f16 = _decode_graph("llama", "f16")
    assert regrouped_weights(plan_program(f16, False, C_FUSION, None)[2]) == {}


def test_q6_k_regrouped_only_for_one_column_products_of_whole_groups() -> None:
    """A q6_K weight is regrouped when every product that reads it has one column and its rows are
    whole 2048-element groups; a prefill's products of several columns keep it as it is."""
    from ggc.capture.llama import LlamaSession, SessionOptions
    from ggc.ir.graph import GgufData

    g = _decode_graph("llama", "q4_k_m")
    q6 = [t for t in g.leafs if t.type.name == "q6_K" and "weight" in t.flags and isinstance(t.data, GgufData)]
    assert q6  # the tiny model's rows are 256 elements: not whole groups, so none is regrouped
    assert all(t.ne[0] % 2048 for t in q6)
    assert not {k for k in regrouped_weights(plan_program(g, False, CUDA_FUSION, None)[2]).values()
                if k == "GGC_TYPE_Q6_KR8"}
    with LlamaSession(tiny_model("llama", "q4_k_m"), SessionOptions(n_ctx=256, n_batch=8)) as sess:
        pre = sess.capture(8, 1)[0]
    (w,) = [t for t in pre.leafs if t.data is not None and t.data.name == q6[0].data.name]
    users = [u for u in pre.consumers()[w.id]]
    assert users and any(u.src[1].ne[1] > 1 for u in users)  # read by a product of 8 columns in the prefill

    def product(k: int, cols: int) -> Graph:
        from ggc.ir.types import contiguous_strides, get_type

        q6, f32 = get_type("q6_K"), get_type("f32")
        wne, xne, yne = (k, 16, 1, 1), (k, cols, 1, 1), (16, cols, 1, 1)
        w = Tensor(0, q6, wne, contiguous_strides(q6, wne), flags=frozenset({"weight"}), name="w",  # type: ignore[arg-type]
                   data=GgufData("w"))
        x = Tensor(1, f32, xne, contiguous_strides(f32, xne), flags=frozenset({"input"}), name="x")  # type: ignore[arg-type]
        y = Tensor(2, f32, yne, contiguous_strides(f32, yne), op="MUL_MAT", src=[w, x], name="y",  # type: ignore[arg-type]
                   flags=frozenset({"output"}))
        return Graph([w, x, y], meta={"n_tokens": cols})

    def layouts(*graphs: Graph) -> dict[str, str]:
        return regrouped_weights(plan_program(list(graphs), False, CUDA_FUSION, None)[2])

    assert layouts(product(2048, 1)) == layouts(product(4096, 1)) == {"w": "GGC_TYPE_Q6_KR8"}
    assert layouts(product(2048, 2)) == layouts(product(768, 1)) == {}
    assert layouts(product(2048, 8), product(2048, 1)) == {}  # a prefill of 8 columns and a decode share it


def _loader_regrouping(tmp_path: Path) -> ctypes.CDLL:
    """ggc_gguf.c's regrouping functions (regroup8, regroup_q4_0, regroup_q6_k), built alone."""
    from ggc.backends.c.emit import RUNTIME_DIR

    src = (RUNTIME_DIR / "ggc_gguf.c").read_text()
    start = src.index("static void regroup8")
    end = src.index("\n}\n", src.index("static void regroup_q6_k")) + 3
    (tmp_path / "r.c").write_text("#include <string.h>\n#include <stddef.h>\n"
                                  + src[start:end].replace("static void regroup_", "void regroup_") + "\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", str(tmp_path / "r.c"), "-o", str(tmp_path / "r.so")],
                   check=True)
    return ctypes.CDLL(str(tmp_path / "r.so"))


def test_loader_regroups_q4_0(tmp_path: Path) -> None:
    """ggc_gguf.c's regroup_q4_0 on random blocks: 8 scales, then 8 x 16 quant bytes, each group."""
    lib = _loader_regrouping(tmp_path)
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (3 * 16, 18), dtype=np.uint8)  # 3 rows of 16 blocks (512 elements)
    buf = bytearray(blocks.tobytes())
    c = (ctypes.c_char * len(buf)).from_buffer(buf)
    lib.regroup_q4_0(c, ctypes.c_size_t(len(buf)))
    out = np.frombuffer(bytes(buf), np.uint8).reshape(-1, 144)
    groups = blocks.reshape(-1, 8, 18)
    assert (out[:, :16].reshape(-1, 8, 2) == groups[:, :, :2]).all()
    assert (out[:, 16:].reshape(-1, 8, 16) == groups[:, :, 2:]).all()
    # the CUDA harness's regrouping (kernel tests of GGC_TYPE_Q4_0R8) is the loader's
    assert regroup_q4_0(blocks.tobytes()) == bytes(buf)


def test_loader_regroups_q6_k(tmp_path: Path) -> None:
    """ggc_gguf.c's regroup_q6_k on random blocks: 8 ql, 8 qh, 8 scales, 8 d, each group; and the
    CUDA harness's regrouping is the loader's."""
    lib = _loader_regrouping(tmp_path)
    blocks = np.random.default_rng(1).integers(0, 256, (2 * 16, 210), dtype=np.uint8)  # 2 rows of 4096
    buf = bytearray(blocks.tobytes())
    lib.regroup_q6_k((ctypes.c_char * len(buf)).from_buffer(buf), ctypes.c_size_t(len(buf)))
    out = np.frombuffer(bytes(buf), np.uint8).reshape(-1, 1680)
    groups = blocks.reshape(-1, 8, 210)
    for at, (lo, hi) in zip((0, 1024, 1536, 1664), ((0, 128), (128, 192), (192, 208), (208, 210))):
        n = hi - lo
        assert (out[:, at : at + 8 * n].reshape(-1, 8, n) == groups[:, :, lo:hi]).all()
    assert regroup_q6_k(blocks.tobytes()) == bytes(buf)


def test_residual_add_joins_its_product(llama_q4_0: Graph) -> None:
    g = llama_q4_0
    live = live_nodes(g)
    groups = make_groups(g, live, Fusion(heads=ROW_HEADS, epilogues=ADD_EPILOGUES))
    epi = [grp for grp in groups if grp.fused and grp.nodes[0].op == "MUL_MAT"]
    assert all([t.op for t in grp.nodes] == ["MUL_MAT", "ADD"] for grp in epi)
    names = sorted(grp.nodes[0].name.split("-")[0] for grp in epi)
    n_layers = sum(1 for t in g.nodes if t.op == "FLASH_ATTN_EXT")
    # attn_out + residual and ffn_out + residual in every layer; the last layer's attention output
    # goes through GET_ROWS (out_ids) before its ADD, so that product stays alone
    assert names.count("ffn_out") == n_layers and names.count("attn_out") == n_layers - 1
    assert all(len(grp.outputs) == 1 and grp.outputs[0].op == "ADD" for grp in epi)
    # Q, K, V products are read by views and ROPE, never fused with an ADD
    assert not any(grp.nodes[0].name.startswith(("Qcur", "Kcur", "Vcur")) for grp in epi)


def test_gate_and_up_join_their_swiglu(llama_q4_0: Graph) -> None:
    g = llama_q4_0
    live = live_nodes(g)
    groups = make_groups(g, live, Fusion(heads=ROW_HEADS, epilogues=ADD_EPILOGUES, glu_pairs=GLU_PAIRS))
    pairs = [grp for grp in groups if [t.op for t in grp.nodes] == ["MUL_MAT", "MUL_MAT", "GLU"]]
    n_layers = sum(1 for t in g.nodes if t.op == "FLASH_ATTN_EXT")
    assert len(pairs) == n_layers
    assert all(grp.nodes[0].name.startswith("ffn_gate") and grp.nodes[1].name.startswith("ffn_up") for grp in pairs)
    assert all(grp.outputs == [grp.nodes[2]] for grp in pairs)
    # a prefill graph (8 columns) keeps its products apart (the pair kernel is matrix-vector only),
    # except in the last layer, whose FFN sees only the one row that gives logits (out_ids)
    from ggc.capture.llama import LlamaSession, SessionOptions

    with LlamaSession(tiny_model("llama", "q4_0"), SessionOptions(n_ctx=256, n_batch=8)) as s:
        pre = s.capture(8, 1)[0]
    fused = [grp for grp in make_groups(pre, live_nodes(pre), Fusion(glu_pairs=GLU_PAIRS)) if len(grp.nodes) == 3]
    assert [grp.nodes[0].name for grp in fused] == [f"ffn_gate-{n_layers - 1}"]


def test_float_weights_pair_when_rows_are_vector_aligned() -> None:
    g = _decode_graph("llama", "f16")
    groups = make_groups(g, live_nodes(g), Fusion(glu_pairs=GLU_PAIRS))
    n_layers = sum(1 for t in g.nodes if t.op == "FLASH_ATTN_EXT")
    assert sum(1 for grp in groups if len(grp.nodes) == 3) == n_layers
    # rows that are not whole 16-byte groups of 8 elements stay apart (the pair kernel's vector loads)
    from ggc.capture.builder import GraphBuilder
    from tests.test_builder import weight

    with GraphBuilder() as b:
        x = b.tensor("f32", (36, 1), "x", input=True)
        gate, up = b.op("mul_mat", weight(b, "f16", 36, 8, "wg"), x), b.op("mul_mat", weight(b, "f16", 36, 8, "wu"), x)
        odd = b.capture(b.op("swiglu_split", gate, up))
    assert not any(len(grp.nodes) == 3 for grp in make_groups(odd, live_nodes(odd), Fusion(glu_pairs=GLU_PAIRS)))


def test_q_k_v_run_as_siblings(llama_q4_0: Graph) -> None:
    from ggc.backends.cuda.emit import _library_call

    g = llama_q4_0
    groups = make_groups(g, live_nodes(g), dataclasses.replace(CUDA_FUSION, rope_epilogues=False))
    sib = [grp for grp in groups if len(grp.nodes) > 1 and grp.nodes[0].op == "MUL_MAT"
           and all(t.op == "MUL_MAT" for t in grp.nodes[1:-1]) and grp.nodes[-1].op in ("MUL_MAT", "SET_ROWS")]
    n_layers = sum(1 for t in g.nodes if t.op == "FLASH_ATTN_EXT")
    assert len(sib) == n_layers
    for grp in sib:
        *products, store = grp.nodes
        # V's SET_ROWS joins the launch: V goes straight into its cache rows and never to memory alone
        assert [t.name.split("-")[0] for t in products] == ["Qcur", "Vcur", "Kcur"]
        assert store.op == "SET_ROWS" and store.name.startswith("cache_v_l")
        v = products[1]
        assert grp.outputs == [products[0], products[2], store]
        call = _library_call(grp)
        assert call is not None and call.dst is products[0]
        assert call.srcs[4:] == [v.src[0], store, products[2].src[0], products[2], store.src[1], None]
    # the later products moved up to the first, ahead of Q's ROPE; every reader still follows its writer
    order = {t.id: grp.id for grp in groups for t in grp.nodes}
    for grp in groups:
        for t in grp.nodes:
            assert all(order.get(s.id, -1) <= grp.id for s in t.src if s is not None), t.label()
    # gate and up stay a SWIGLU pair (not siblings); a prefill graph's products (8 columns) stay apart
    assert sum(1 for grp in groups if [t.op for t in grp.nodes] == ["MUL_MAT", "MUL_MAT", "GLU"]) == n_layers
    from ggc.capture.llama import LlamaSession, SessionOptions

    with LlamaSession(tiny_model("llama", "q4_0"), SessionOptions(n_ctx=256, n_batch=8)) as s:
        pre = s.capture(8, 1)[0]
    assert not any(len(grp.nodes) > 1 and all(t.op == "MUL_MAT" for t in grp.nodes[:2]) and grp.nodes[-1].op != "GLU"
                   for grp in make_groups(pre, live_nodes(pre), CUDA_FUSION))
    # without sibling stores the launch is the three products and V's SET_ROWS stays a group of its own
    plain = make_groups(g, live_nodes(g), dataclasses.replace(CUDA_FUSION, sibling_stores=False, rope_epilogues=False))
    assert sum(1 for grp in plain if [t.op for t in grp.nodes] == ["MUL_MAT"] * 3) == n_layers
    assert sum(1 for grp in plain if [t.op for t in grp.nodes] == ["SET_ROWS"]) == n_layers


def test_rope_stores_k_into_its_cache_rows(llama_q4_0: Graph) -> None:
    from ggc.backends.cuda.emit import _library_call

    g = llama_q4_0
    groups = make_groups(g, live_nodes(g), dataclasses.replace(CUDA_FUSION, twins=frozenset(), rope_epilogues=False))
    stores = [grp for grp in groups if [t.op for t in grp.nodes] == ["ROPE", "SET_ROWS"]]
    n_layers = sum(1 for t in g.nodes if t.op == "FLASH_ATTN_EXT")
    assert len(stores) == n_layers  # K's ROPE in every layer; Q's ROPE is read by attention, not stored
    for grp in stores:
        rope, store = grp.nodes
        assert rope.name.startswith("Kcur") and store.src[2].name.startswith("cache_k")
        assert grp.outputs == [store]  # the roped K never goes to memory on its own
        call = _library_call(grp)
        assert call is not None and call.op is rope and call.dst is store and call.srcs[3] is store.src[1]
    # without the rule, or when the roped rows have another reader, the two stay apart
    assert not any(len(grp.nodes) == 2 and grp.nodes[0].op == "ROPE"
                   for grp in make_groups(g, live_nodes(g), Fusion(elementwise=CUDA_FUSION.elementwise)))
    from ggc.capture.builder import GraphBuilder

    def rope_into_cache(also_read: bool) -> list[list[str]]:
        with GraphBuilder() as b:
            x = b.tensor("f32", (8, 2, 3), "x", input=True)
            pos = b.tensor("i32", (3,), "pos", input=True)
            cache = b.tensor("f16", (16, 10), "cache", input=True)
            idx = b.tensor("i64", (3,), "idx", input=True)
            r = b.op("rope_ext", x, pos, None, 8, 0, 64, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0)
            out = b.op("set_rows", cache, b.op("reshape_2d", r, 16, 3), idx)
            g = b.capture(b.op("add", b.op("cpy", out, b.tensor("f32", (16, 10), "c")), b.op("sum", r))
                          if also_read else out)
        return [[t.op for t in grp.nodes] for grp in make_groups(g, live_nodes(g), CUDA_FUSION)]

    assert ["ROPE", "SET_ROWS"] in rope_into_cache(False)
    assert ["ROPE", "SET_ROWS"] not in rope_into_cache(True)


def test_q_and_k_ropes_run_as_twins(llama_q4_0: Graph) -> None:
    """Q's ROPE and K's, with the same positions and parameters, as one launch; K's rows still go
    straight into the cache"""
    from ggc.backends.cuda.emit import _library_call
    from ggc.capture.builder import GraphBuilder

    g = llama_q4_0
    n_layers = sum(1 for t in g.nodes if t.op == "FLASH_ATTN_EXT")
    apart = dataclasses.replace(CUDA_FUSION, rope_epilogues=False)
    twins = [grp for grp in make_groups(g, live_nodes(g), apart) if grp.nodes[0].op == "ROPE"]
    assert len(twins) == n_layers
    for grp in twins:
        q, k, store = grp.nodes
        assert [q.op, k.op, store.op] == ["ROPE", "ROPE", "SET_ROWS"]
        assert q.name.startswith("Qcur") and k.name.startswith("Kcur") and store.src[2].name.startswith("cache_k")
        assert grp.outputs == [q, store]  # Q for attention; the roped K only in its cache rows
        call = _library_call(grp)
        assert call is not None and call.op is q and call.dst is q
        assert call.srcs[3] is None and call.srcs[4] is k.src[0] and call.srcs[5] is store
        assert call.srcs[6] is store.src[1]

    def ropes(base2: float, chained: bool) -> list[list[str]]:
        with GraphBuilder() as b:
            x = b.tensor("f32", (8, 4, 3), "x", input=True)
            y = b.tensor("f32", (8, 2, 3), "y", input=True)
            pos = b.tensor("i32", (3,), "pos", input=True)
            rx = b.op("rope_ext", x, pos, None, 8, 0, 64, 10000.0, 1.0, 0.0, 1.0, 0.0, 0.0)
            src = b.op("view_3d", rx, 8, 2, 3, 32, 128, 0) if chained else y
            ry = b.op("rope_ext", src, pos, None, 8, 0, 64, base2, 1.0, 0.0, 1.0, 0.0, 0.0)
            g = b.capture(b.op("mul_mat", rx, ry))  # both ROPEs before their reader, in this order
        return [[t.op for t in grp.nodes] for grp in make_groups(g, live_nodes(g), CUDA_FUSION)]

    assert ["ROPE", "ROPE"] in ropes(10000.0, False)
    assert ["ROPE", "ROPE"] not in ropes(500000.0, False)  # other parameters
    assert ["ROPE", "ROPE"] not in ropes(10000.0, True)  # the second reads the first


def test_q_and_k_ropes_join_the_q_k_v_launch(llama_q4_0: Graph) -> None:
    """Llama's ROPEs rotate adjacent pairs: the Q/K/V launch of quantized weights stores Q and K roped (K
    into its cache rows) and the ROPE launch goes; NEOX pairs (half a head apart), rotated rows with
    another reader and float weights stay apart."""
    from ggc.backends.cuda.emit import _library_call
    from ggc.capture.builder import GraphBuilder

    g = llama_q4_0
    n_layers = sum(1 for t in g.nodes if t.op == "FLASH_ATTN_EXT")
    groups = make_groups(g, live_nodes(g), CUDA_FUSION)
    apart = make_groups(g, live_nodes(g), dataclasses.replace(CUDA_FUSION, rope_epilogues=False))
    assert len(groups) == len(apart) - n_layers
    joined = [grp for grp in groups if grp.nodes[0].op == "MUL_MAT" and "ROPE" in [t.op for t in grp.nodes]]
    assert len(joined) == n_layers
    for grp in joined:
        q, v, k, store_v, rope_q, rope_k, store_k = grp.nodes
        assert [t.op for t in grp.nodes] == ["MUL_MAT"] * 3 + ["SET_ROWS", "ROPE", "ROPE", "SET_ROWS"]
        names = [q.name[:4], v.name[:4], k.name[:4], rope_q.name[:4], rope_k.name[:4]]
        assert names == ["Qcur", "Vcur", "Kcur", "Qcur", "Kcur"]
        # roped Q for attention; V and the roped K only in their cache rows (results: they outlive the run)
        assert grp.outputs == [store_v, rope_q, store_k]
        call = _library_call(grp)
        assert call is not None and call.op is q and call.dst is rope_q
        assert call.srcs == [q.src[0], q.src[1], rope_q.src[1], None, v.src[0], store_v, k.src[0], store_k,
                             store_v.src[1], store_k.src[1]]
        assert call.words is not None and call.words[0] == 0b101  # products 0 (Q) and 2 (K) rotate
        assert call.words[1:] == op_param_words(rope_q)[1:]
    # NEOX models rotate pairs half a head apart: their ROPEs keep their own launches
    moe = _decode_graph("qwen3moe", "q4_0")
    assert not any(grp.nodes[0].op == "MUL_MAT" and "ROPE" in [t.op for t in grp.nodes]
                   for grp in make_groups(moe, live_nodes(moe), CUDA_FUSION))

    def qk(mode: int, q_read: bool, wtype: str = "q8_0") -> list[list[str]]:
        from tests.test_builder import weight

        with GraphBuilder() as b:
            x = b.tensor("f32", (64, 1), "x", input=True)
            pos = b.tensor("i32", (1,), "pos", input=True)
            q = b.op("mul_mat", weight(b, wtype, 64, 32, "wq"), x)
            k = b.op("mul_mat", weight(b, wtype, 64, 16, "wk"), x)
            rq = b.op("rope_ext", b.op("reshape_3d", q, 16, 2, 1), pos, None, 16, mode, 64, 10000.0, 1.0, 0.0, 1.0,
                      0.0, 0.0)
            rk = b.op("rope_ext", b.op("reshape_3d", k, 16, 1, 1), pos, None, 16, mode, 64, 10000.0, 1.0, 0.0, 1.0,
                      0.0, 0.0)
            out = b.op("mul_mat", rk, rq)  # both ROPEs before their reader, as twins
            g = b.capture(b.op("add", b.op("sum", out), b.op("sum", q)) if q_read else out)
        return [[t.op for t in grp.nodes] for grp in make_groups(g, live_nodes(g), CUDA_FUSION)]

    assert qk(0, False) == [["MUL_MAT", "MUL_MAT", "ROPE", "ROPE"], ["MUL_MAT"]]
    assert qk(2, False)[:2] == [["MUL_MAT", "MUL_MAT"], ["ROPE", "ROPE"]]  # NEOX
    assert ["ROPE", "ROPE"] in qk(0, True)  # Q's product has another reader
    assert qk(0, False, "f16")[:2] == [["MUL_MAT", "MUL_MAT"], ["ROPE", "ROPE"]]  # float weights


def test_embedding_stays_in_host_memory(llama_q4_0: Graph) -> None:
    from ggc.backends.cuda.emit import cuda_plans

    _, _, [p] = cuda_plans(llama_q4_0)
    weights = {b.tensor.data.name: b.tensor for b in p.buffers.values() if b.region == "weights"}
    emb = weights.pop("token_embd.weight")
    # the embedding, which only GET_ROWS reads, first and alone in the host part
    assert p.host_size % 4096 == 0 and emb.nbytes <= p.host_size < emb.nbytes + 4096
    assert p.offset_of(emb) == 0
    assert weights and all(p.offset_of(w) >= p.host_size for w in weights.values())
    # the C target keeps everything in its one arena
    assert plan_program(llama_q4_0, False, C_FUSION, None)[2][0].host_size == 0


def test_tied_embedding_stays_on_the_gpu() -> None:
    from ggc.backends.cuda.emit import cuda_plans

    g = _decode_graph("qwen2", "q8_0")  # token_embd.weight is also the output projection
    assert any(t.op == "MUL_MAT" and t.src[0].name == "token_embd.weight" for t in g.nodes)
    assert cuda_plans(g)[2][0].host_size == 0


def test_attention_quantizes_its_row_only_for_q8_0_products() -> None:
    """the attention call writes the output projection's q8_0 activations at decode (one row) for
    q4_0 / q8_0 weights, not for f16 or k-quant weights nor for a prefill's rows"""
    from ggc.capture.llama import LlamaSession, SessionOptions

    for quant, want in (("f16", False), ("q4_k_m", False), ("q8_0", True), ("q4_0", True)):
        g = _decode_graph("llama", quant)
        p = plan_program(g, False, CUDA_FUSION, None)[2][0]
        assert bool(_quantizing_attention(p)) is want, quant
    with LlamaSession(tiny_model("llama", "q4_0"), SessionOptions(n_ctx=256, n_batch=8)) as s:
        pre = s.capture(8, 1)[0]
    assert not _quantizing_attention(plan_program(pre, False, CUDA_FUSION, None)[2][0])
