"""Round trips through every historical ggml_graph_export layout, and malformed files."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest

from ggc.errors import GgcError
from ggc.formats import ggraph
from ggc.formats.legacy import LAYOUTS, Layout, detect_layout, import_bytes, import_ggml
from ggc.formats.legacy_write import export_ggml
from ggc.ir.graph import Graph, InlineData, Tensor
from ggc.ir.types import TYPES, contiguous_strides

F32 = TYPES["f32"]
EPS = float(np.float32(1e-6))  # the value 2023-H1 ggml hard-coded for RMS_NORM


def _shape(*ne: int) -> tuple[int, int, int, int]:
    return tuple(ne + (1,) * (4 - len(ne)))  # type: ignore[return-value]


class _G:
    """A tiny graph builder: contiguous f32 tensors unless told otherwise."""

    def __init__(self) -> None:
        self.tensors: list[Tensor] = []

    def add(self, op: str, ne: tuple[int, ...], *src: Tensor, **kw: object) -> Tensor:
        ne4 = _shape(*ne)
        nb = kw.pop("nb", None) or contiguous_strides(F32, ne4)
        t = Tensor(id=len(self.tensors), type=F32, ne=ne4, nb=nb, op=op, src=list(src), **kw)  # type: ignore[arg-type]
        self.tensors.append(t)
        return t

    def leaf(self, name: str, *ne: int, seed: int, flags: frozenset[str] = frozenset()) -> Tensor:
        data = np.random.default_rng(seed).standard_normal(int(np.prod(ne)), dtype=np.float32).tobytes()
        return self.add("NONE", ne, name=name, data=InlineData(data), flags=flags)


def build_graph() -> Graph:
    g = _G()
    x = g.leaf("x", 8, 4, seed=1, flags=frozenset({"input"}))
    w = g.leaf("w", 8, 6, seed=2)
    b = g.leaf("b", 6, 4, seed=3)
    dst = g.leaf("dst", 6, 2, seed=4)
    p = g.leaf("p", 6, 4, seed=5, flags=frozenset({"param"}))  # v2 writes it as a node with data
    mm = g.add("MUL_MAT", (6, 4), w, x, name="mm")
    add = g.add("ADD", (6, 4), mm, b, name="add")
    add2 = g.add("ADD", (6, 4), add, p, name="add2")
    rs = g.add("RESHAPE", (6, 2, 2), add2, name="rs", view_src=add2)
    pm = g.add("PERMUTE", (6, 2, 2), rs, name="pm", nb=(4, 48, 24, 96), params={"axis1": 2, "axis2": 1, "axis3": 3},
               view_src=add2)
    ct = g.add("CONT", (6, 2, 2), pm, name="ct")
    v = g.add("VIEW", (6, 2), ct, name="v", nb=(4, 24, 48, 96), params={"offset": 48}, view_src=ct, view_offs=48)
    dm = g.add("DIAG_MASK_INF", (6, 2), v, name="dm", params={"n_past": 1})
    sm = g.add("SOFT_MAX", (6, 2), dm, name="sm", params={"scale": 1.0})
    rn = g.add("RMS_NORM", (6, 2), sm, name="rn", params={"eps": EPS})
    si = g.add("UNARY", (6, 2), rn, name="si", params={"op": "SILU"})
    sc = g.add("SCALE", (6, 2), si, name="sc", params={"s": 0.5})
    g.add("CPY", (6, 2), sc, dst, name="out", view_src=dst, flags=frozenset({"output"}))
    graph = Graph(g.tensors)
    graph.validate()
    return graph


def _fields(t: Tensor, lay: Layout) -> dict[str, object]:
    return {
        "type": t.type.name, "ne": t.ne, "nb": t.nb, "op": t.op, "params": t.params, "raw": t.raw,
        "src": [None if s is None else s.id for s in t.src],
        "view": None if t.view_src is None else (t.view_src.id, t.view_offs),
        "flags": t.flags if lay.has_flags else frozenset(),  # only version 2 stores flags
        "name": t.name, "data": t.data,
    }


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph()


@pytest.mark.parametrize("key", list(LAYOUTS))
def test_round_trip_every_layout(graph: Graph, key: str) -> None:
    lay = LAYOUTS[key]
    blob = export_ggml(graph, key)
    assert detect_layout(blob) is lay
    back = import_bytes(blob)
    assert len(back.tensors) == len(graph.tensors)
    for want, got in zip(graph.tensors, back.tensors):
        assert _fields(got, lay) == _fields(want, lay), f"{key}: {want.label()}"
    back.validate()
    text = ggraph.write(back)
    assert ggraph.write(ggraph.parse(text)) == text


def test_layouts_are_distinct_on_disk(graph: Graph) -> None:
    blobs = {key: export_ggml(graph, key) for key in LAYOUTS}
    assert len(set(blobs.values())) == len(LAYOUTS)
    v2 = LAYOUTS["v2-name64-params64-src10-flags"]
    version, n_leafs, n_nodes = struct.unpack_from("<III", blobs[v2.key], 4)
    # version 2 moved the PARAM tensor among the nodes, followed by its data
    assert (version, n_leafs, n_nodes) == (2, len(graph.leafs) - 1, len(graph.nodes) + 1)


def test_era1_parameter_tensors_become_extra_leafs(graph: Graph) -> None:
    """2023-H1 ggml passed VIEW/DIAG_MASK/SCALE parameters as leafs; the importer folds them back."""
    blob = export_ggml(graph, "v1-name32-noparams-src6-ndims-ptr")
    n_leafs = struct.unpack_from("<I", blob, 8)[0]
    assert n_leafs == len(graph.leafs) + 3
    assert len(import_bytes(blob).leafs) == len(graph.leafs)


def test_import_ggml_from_file(graph: Graph, tmp_path: Path) -> None:
    path = tmp_path / "g.ggml"
    path.write_bytes(export_ggml(graph, "v1-name64-params64-src10"))
    back = import_ggml(path)
    assert back.meta["legacy_layout"] == "v1-name64-params64-src10"
    assert back.by_name("out") is not None


# ---------------------------------------------------------------- malformed input


def _small(key: str) -> tuple[bytes, Layout]:
    """One leaf and one node: the node record is the last thing in the file."""
    g = _G()
    x = g.leaf("x", 4, seed=7)
    g.add("ADD", (4,), x, x, name="y")
    return export_ggml(Graph(g.tensors), key), LAYOUTS[key]


def _raises(data: bytes, *words: str) -> str:
    with pytest.raises(GgcError) as info:
        import_bytes(data, "bad.ggml")
    msg = str(info.value)
    assert msg.startswith("bad.ggml: byte ")
    for w in words:
        assert w in msg, msg
    return msg


def test_wrong_magic() -> None:
    blob, _ = _small("v1-name64-params64-src10")
    _raises(b"GGUF" + blob[4:], "magic")


def test_bad_version() -> None:
    blob, _ = _small("v1-name64-params64-src10")
    _raises(blob[:4] + struct.pack("<I", 7) + blob[8:], "version 7")


@pytest.mark.parametrize("key", list(LAYOUTS))
def test_truncated_everywhere(key: str) -> None:
    blob, lay = _small(key)
    cuts = {0, 3, 10, 23, 30, 24 + lay.fixed_size(False) - 1, 24 + lay.fixed_size(False) + 5, len(blob) - 1}
    for cut in sorted(cuts):
        _raises(blob[:cut])


def test_trailing_garbage() -> None:
    blob, _ = _small("v1-name64-params32-src6-ndims")
    _raises(blob + b"\0" * 3)


@pytest.mark.parametrize("key", list(LAYOUTS))
def test_source_index_out_of_range(key: str) -> None:
    blob, lay = _small(key)
    first_src = len(blob) - 4 * lay.n_src
    _raises(blob[:first_src] + struct.pack("<i", 999) + blob[first_src + 4 :], "index 999", "out of range")


@pytest.mark.parametrize("key", list(LAYOUTS))
def test_unknown_op_number(key: str) -> None:
    blob, lay = _small(key)
    op_at = len(blob) - lay.fixed_size(True) + 4
    _raises(blob[:op_at] + struct.pack("<I", 250) + blob[op_at + 4 :], "unknown op number 250")


def test_op_without_modern_equivalent() -> None:
    blob, lay = _small("v1-name64-params32-src6-ndims")
    op_at = len(blob) - lay.fixed_size(True) + 4
    alibi = lay.ops.index("ALIBI")
    _raises(blob[:op_at] + struct.pack("<I", alibi) + blob[op_at + 4 :], "ALIBI", "no modern")


def test_old_rope_fails_clearly() -> None:
    """2023-H1 ROPE took (n_past, n_dims, mode) in a tensor and no positions: no modern form."""
    g = _G()
    x = g.leaf("x", 4, 2, seed=9)
    g.add("ROPE", (4, 2), x, name="r", params={"n_dims": 4})  # the writer adds the era's parameter tensor
    blob = export_ggml(Graph(g.tensors), "v1-name32-noparams-src6-ndims-ptr")
    _raises(blob, "ROPE", "positions")


def test_empty_graph_is_ambiguous() -> None:
    _raises(struct.pack("<IIIIQ", 0x67676D6C, 1, 0, 0, 0), "ambiguous")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(GgcError, match="cannot read"):
        import_ggml(tmp_path / "missing.ggml")


def test_writer_refuses_what_a_layout_cannot_hold() -> None:
    g = _G()
    x = g.leaf("x", 4, seed=3)
    g.add("SOFT_MAX", (4,), x, name="s", params={"scale": 0.5})
    with pytest.raises(GgcError, match="hard-coded"):
        export_ggml(Graph(g.tensors), "v1-name64-params32-src6-ndims")
    with pytest.raises(GgcError, match="unknown legacy layout"):
        export_ggml(Graph(g.tensors), "v9")


@pytest.mark.parametrize("key", list(LAYOUTS))
def test_random_corruption_gives_only_ggc_errors(graph: Graph, key: str) -> None:
    """Flipped bytes and cut files either still import or raise GgcError, never anything else."""
    blob = export_ggml(graph, key)
    rng = random.Random(key)
    for _ in range(120):
        b = bytearray(blob)
        if rng.random() < 0.8:
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        else:
            del b[rng.randrange(len(b)) :]
        try:
            import_bytes(bytes(b))
        except GgcError:
            pass
