"""Graphs built through ggml's C API: capture, text round trip, field-by-field and value identity."""

from __future__ import annotations

import ctypes as C
from collections.abc import Callable

import numpy as np
import pytest

from ggc.capture import ggml_lib
from ggc.capture.builder import GraphBuilder, Ref
from ggc.capture.walk import compare_live
from ggc.formats import ggraph
from ggc.oracle.compare import compare
from ggc.oracle.rebuild import Rebuilt, leaf_source

RNG = np.random.default_rng(1234)


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def weight(b: GraphBuilder, tname: str, ne0: int, ne1: int, name: str = "w", ne2: int = 1) -> Ref:
    """A weight of any ggml type filled with random values (quantized by gguf's reference quantizer)."""
    x = _f32(ne2, ne1, ne0)
    if tname == "f32":
        data = x.tobytes()
    elif tname == "f16":
        data = x.astype(np.float16).tobytes()
    else:
        data = b.g.quantize(tname, x.reshape(-1, ne0))
    return b.tensor(tname, (ne0, ne1, ne2), name, data=data)


def act(b: GraphBuilder, *ne: int, name: str = "x") -> Ref:
    return b.tensor("f32", ne, name, input=True, data=_f32(*reversed(ne)))


def _mask(b: GraphBuilder, n_kv: int, n_q: int) -> Ref:
    m = np.zeros((n_q, n_kv), np.float32)
    for i in range(n_q):
        m[i, n_kv - n_q + i + 1 :] = -np.inf
    return b.tensor("f16", (n_kv, n_q), "mask", input=True, data=m.astype(np.float16))


def _rope(mode: int) -> Callable[[GraphBuilder], Ref]:
    def build(b: GraphBuilder) -> Ref:
        x = act(b, 64, 4, 5)
        pos = b.tensor("i32", (5,), "pos", input=True, data=np.arange(3, 8, dtype=np.int32))
        return b.op("rope_ext", x, pos, None, 64, mode, 4096, 10000.0, 1.0, 0.0, 1.0, 32.0, 1.0)

    return build


def _flash(kv_type: str) -> Callable[[GraphBuilder], Ref]:
    def build(b: GraphBuilder) -> Ref:
        q = act(b, 64, 3, 4, name="q")
        k = weight(b, kv_type, 64, 32, "k", ne2=2)
        v = weight(b, kv_type, 64, 32, "v", ne2=2)
        return b.op("flash_attn_ext", q, k, v, _mask(b, 32, 3), 0.125, 0.0, 0.0)

    return build


def _mul_mat(tname: str) -> Callable[[GraphBuilder], Ref]:
    return lambda b: b.op("mul_mat", weight(b, tname, 256, 16), act(b, 256, 3))


def _get_rows(tname: str) -> Callable[[GraphBuilder], Ref]:
    def build(b: GraphBuilder) -> Ref:
        rows = b.tensor("i32", (4,), "ids", input=True, data=np.array([3, 0, 7, 3], np.int32))
        return b.op("get_rows", weight(b, tname, 256, 8), rows)

    return build


def _set_rows(b: GraphBuilder) -> Ref:
    dst = b.tensor("f16", (64, 16), "cache", data=_f32(16, 64).astype(np.float16))
    idx = b.tensor("i64", (3,), "idx", input=True, data=np.array([5, 1, 9], np.int64))
    return b.op("set_rows", dst, act(b, 64, 3), idx)


def _mul_mat_id(b: GraphBuilder) -> Ref:
    experts = weight(b, "q8_0", 64, 16, "experts", ne2=4)
    x = act(b, 64, 2, 3)
    ids = b.tensor("i32", (2, 3), "ids", input=True, data=np.array([[0, 3], [1, 2], [3, 3]], np.int32))
    return b.op("mul_mat_id", experts, x, ids)


OPS: dict[str, Callable[[GraphBuilder], Ref]] = {
    "add": lambda b: b.op("add", act(b, 32, 4), act(b, 32, 4, name="y")),
    "add_broadcast": lambda b: b.op("add", act(b, 32, 4), act(b, 32, 1, name="y")),
    "mul": lambda b: b.op("mul", act(b, 32, 4), act(b, 32, 1, name="y")),
    "sub": lambda b: b.op("sub", act(b, 32, 4), act(b, 32, 4, name="y")),
    "div": lambda b: b.op("div", act(b, 32, 4), b.op("exp", act(b, 32, 4, name="y"))),
    "scale": lambda b: b.op("scale", act(b, 32, 4), 0.37),
    "scale_bias": lambda b: b.op("scale_bias", act(b, 32, 4), 0.37, -1.5),
    "rms_norm": lambda b: b.op("rms_norm", act(b, 256, 3), 1e-6),
    "norm": lambda b: b.op("norm", act(b, 256, 3), 1e-5),
    "silu": lambda b: b.op("silu", act(b, 64, 3)),
    "gelu": lambda b: b.op("gelu", act(b, 64, 3)),
    "tanh": lambda b: b.op("tanh", act(b, 64, 3)),
    "sigmoid": lambda b: b.op("sigmoid", act(b, 64, 3)),
    "swiglu_split": lambda b: b.op("swiglu_split", act(b, 64, 3), act(b, 64, 3, name="up")),
    "geglu_split": lambda b: b.op("geglu_split", act(b, 64, 3), act(b, 64, 3, name="up")),
    "soft_max_ext": lambda b: b.op("soft_max_ext", act(b, 32, 3, 2), _mask(b, 32, 3), 0.125, 0.0),
    "rope_norm": _rope(0),
    "rope_neox": _rope(2),
    "flash_attn_f16": _flash("f16"),
    "flash_attn_q8_0": _flash("q8_0"),
    "set_rows": _set_rows,
    "cpy_f32_f16": lambda b: b.op("cpy", act(b, 64, 3), b.tensor("f16", (64, 3), "dst")),
    "cont_permute": lambda b: b.op("cont", b.op("permute", act(b, 16, 4, 3), 0, 2, 1, 3)),
    "transpose_cont": lambda b: b.op("cont", b.op("transpose", act(b, 16, 4))),
    "view_reshape": lambda b: b.op("scale", b.op("reshape_2d", b.op("view_1d", act(b, 16, 4), 32, 64), 8, 4), 2.0),
    "sum_rows": lambda b: b.op("sum_rows", act(b, 64, 3)),
    "argsort": lambda b: b.op("argsort", act(b, 16, 3), 1),
    "top_k": lambda b: b.op("top_k", act(b, 16, 3), 4),
    "concat": lambda b: b.op("concat", act(b, 16, 3), act(b, 16, 2, name="y"), 1),
    "clamp": lambda b: b.op("clamp", act(b, 64, 3), -0.5, 0.5),
    "mul_mat_id": _mul_mat_id,
    **{f"mul_mat_{t}": _mul_mat(t) for t in ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0",
                                             "q2_K", "q3_K", "q4_K", "q5_K", "q6_K")},
    **{f"get_rows_{t}": _get_rows(t) for t in ("f32", "f16", "q4_0", "q8_0", "q4_K")},
}


@pytest.mark.parametrize("name", list(OPS))
def test_builder_graph_round_trips_and_recomputes(name: str) -> None:
    with GraphBuilder() as b:
        out = OPS[name](b)
        graph = b.capture(out)
        text = ggraph.write(graph)
        parsed = ggraph.parse(text)
        assert ggraph.write(parsed) == text
        assert compare_live(b.g, parsed, b.cgraph) == []
        live = b.compute()
    got: dict[int, bytes] = {}
    with Rebuilt(parsed) as rb:
        rb.bind_leafs(leaf_source(parsed, None, {}))
        rb.run(lambda t, data: got.__setitem__(t.id, data))
    assert set(got) == set(live)
    for t in parsed.nodes:
        r = compare(t, live[t.id], got[t.id])
        assert r.ok, (t.label(), t.op, r.nmse)


def test_builder_rejects_bad_calls() -> None:
    from ggc.errors import GgcError

    with GraphBuilder() as b:
        with pytest.raises(GgcError, match="no signature"):
            b.op("not_an_op")
        with pytest.raises(GgcError, match="takes 2 arguments"):
            b.op("add", act(b, 4))
        with pytest.raises(GgcError, match="data has 4 bytes"):
            b.tensor("f32", (4,), "x", data=b"1234")


def test_struct_layout_mismatch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ggml_tensor declared with fields in the wrong order must be refused before any walk."""
    fields = list(ggml_lib.GgmlTensor._fields_)
    i, j = [k for k, f in enumerate(fields) if f[0] in ("flags", "op")]
    fields[i], fields[j] = fields[j], fields[i]
    wrong = type("GgmlTensor", (C.Structure,), {"_fields_": fields})
    monkeypatch.setattr(ggml_lib, "GgmlTensor", wrong)
    with pytest.raises(ggml_lib.LayoutError, match="layout mismatch"):
        ggml_lib.verify_layout(ggml_lib.load())


def test_enum_tables_match_the_library() -> None:
    from ggc.ir import ops, types

    g = ggml_lib.load()
    assert [n for n in g.op_names if not ops.is_known(n)] == []
    assert "MUL_MAT" in g.op_names and "SILU" in g.unary_names and "SWIGLU" in g.glu_names
    for num, name in g.type_names.items():
        t = types.TYPES[name]
        assert (t.blck_size, t.type_size, t.quantized) == (
            g.base.ggml_blck_size(num), g.base.ggml_type_size(num), g.base.ggml_is_quantized(num)), name
    assert set(types.TYPES) == set(g.type_names.values())
