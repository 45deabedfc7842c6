"""The .ggraph text format: exact round trips and the malformed-input suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggc.errors import ParseError
from ggc.formats import ggraph
from tests.util import run_ggc

GOOD = """ggraph 1
# a comment
meta arch="toy"
meta n_tokens=2
%0 = NONE f32 ne=[4,2,1,1] nb=[4,16,32,32] flags=input name="x"
%1 = NONE f32 ne=[4,1,1,1] nb=[4,16,16,16] flags=weight data=gguf:"norm.weight" name="norm.weight"
%2 = NONE i32 ne=[2,1,1,1] nb=[4,8,8,8] data=hex:0100000000000000 name="rows"
%3 = RMS_NORM f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0] params={eps=1e-05} name="norm-0"
%4 = MUL f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%3,%1] name="attn_norm-0"
%5 = GET_ROWS f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%4,%2] name="rows \\"q\\" \\xc3\\xa9"
%6 = VIEW f32 ne=[2,2,1,1] nb=[4,16,32,32] src=[%5] view=%5+8 params={offset=8} name="v"
%7 = UNARY f32 ne=[2,2,1,1] nb=[4,8,16,16] src=[%6] params={op=SILU} flags=output,compute name="out"
%8 = x:FUTURE_OP f32 ne=[2,2,1,1] nb=[4,8,16,16] src=[%7,_,%6] raw={0=0x3f800000} name="opaque"
"""


def test_round_trip_is_byte_identical() -> None:
    g = ggraph.parse(GOOD, "good.ggraph")
    text = ggraph.write(g)
    assert ggraph.write(ggraph.parse(text)) == text
    # comments are dropped, everything else is kept exactly
    assert text == "\n".join(line for line in GOOD.splitlines() if not line.startswith("#")) + "\n"
    assert g.tensors[5].name == 'rows "q" é'
    assert g.tensors[8].src[1] is None and g.tensors[8].op == "FUTURE_OP"


def test_float_params_round_trip_exactly() -> None:
    import numpy as np

    for x in (1e-5, 1e-6, 0.1, 1 / 3, 10000.0, 1e-38, 3.4028235e38, -0.0, float("inf")):
        line = (f"%1 = SCALE f32 ne=[4,1,1,1] nb=[4,16,16,16] src=[%0] params={{s={ggraph.fmt_f32(x)}}} "
                'name="s"')
        text = f"ggraph 1\n%0 = NONE f32 ne=[4,1,1,1] nb=[4,16,16,16] name=\"a\"\n{line}\n"
        g = ggraph.parse(text)
        got = g.tensors[1].params.get("s", 0.0)
        assert np.float32(got).tobytes() == np.float32(x).tobytes() or (x == 0.0 and "s" not in g.tensors[1].params)
        assert ggraph.write(g) == text or x == -0.0


HEAD = "ggraph 1\n%0 = NONE f32 ne=[4,2,1,1] nb=[4,16,32,32] name=\"x\"\n"

# (name, text, line, column or None, message fragment)
MALFORMED = [
    ("empty file", "", 1, 1, "empty file"),
    ("wrong magic", "graph 1\n", 1, 1, "not a .ggraph"),
    ("missing version", "ggraph\n", 1, 8, "version"),
    ("future version", "ggraph 9\n", 1, 8, "unsupported version 9"),
    ("truncated without newline", HEAD + "%1 = ADD f32 ne=[4,2", 3, None, "truncated"),
    ("truncated mid line", HEAD + "%1 = ADD f32 ne=[4,2\n", 3, None, "expected"),
    ("bad integer", HEAD + "%1 = NONE f32 ne=[4,x,1,1] nb=[4,16,32,32] name=\"y\"\n", 3, 21, "bad integer"),
    ("bad float", HEAD + "%1 = RMS_NORM f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0] params={eps=1e-5e} name=\"n\"\n",
     3, None, "bad number"),
    ("float overflow", HEAD + "%1 = SCALE f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0] params={s=1e39} name=\"n\"\n",
     3, None, "float32"),
    ("int32 overflow", HEAD + "%1 = ARGSORT i32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0] params={order=4294967296} "
     "name=\"n\"\n", 3, None, "int32"),
    ("unknown op", HEAD + "%1 = MATMUL f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0] name=\"n\"\n", 3, 6, "unknown op"),
    ("opaque prefix on a known op", HEAD + "%1 = x:ADD f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0,%0] name=\"n\"\n",
     3, 6, "known op"),
    ("lower-case op", HEAD + "%1 = add f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0,%0] name=\"n\"\n", 3, 6, "bad op"),
    ("unknown type", HEAD + "%1 = NONE f33 ne=[4,2,1,1] nb=[4,16,32,32] name=\"n\"\n", 3, 11, "unknown type"),
    ("forward reference", HEAD + "%1 = ADD f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0,%2] name=\"n\"\n", 3, 51,
     "before it is defined"),
    ("self reference (cycle)", HEAD + "%1 = ADD f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%1,%0] name=\"n\"\n", 3, 48,
     "before it is defined"),
    ("id out of sequence", HEAD + "%2 = NONE f32 ne=[4,2,1,1] nb=[4,16,32,32] name=\"n\"\n", 3, 1, "out of sequence"),
    ("wrong stride count", HEAD + "%1 = NONE f32 ne=[4,2,1,1] nb=[4,16,32] name=\"n\"\n", 3, 31, "nb needs 4"),
    ("wrong ne count", HEAD + "%1 = NONE f32 ne=[4,2,1,1,1] nb=[4,16,32,32] name=\"n\"\n", 3, 18, "ne needs 4"),
    ("view out of bounds", HEAD + "%1 = VIEW f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0] view=%0+8 params={offset=8} "
     "name=\"v\"\n", 3, 1, "outside its parent"),
    ("view op without parent", HEAD + "%1 = RESHAPE f32 ne=[8,1,1,1] nb=[4,32,32,32] src=[%0] name=\"v\"\n", 3, 1,
     "no view parent"),
    ("wrong source count", HEAD + "%1 = ADD f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0] name=\"n\"\n", 3, 1,
     "takes 2..2 sources"),
    ("shape mismatch", HEAD + "%1 = MUL_MAT f32 ne=[4,4,1,1] nb=[4,16,64,64] src=[%0,%0] name=\"n\"\n", 3, 1,
     "has ne=[2, 2, 1, 1]"),
    ("non-contiguous result", HEAD + "%1 = ADD f32 ne=[4,2,1,1] nb=[4,32,64,64] src=[%0,%0] name=\"n\"\n", 3, 1,
     "not contiguous"),
    ("block size", HEAD + "%1 = NONE q4_0 ne=[16,1,1,1] nb=[18,18,18,18] name=\"q\"\n", 3, 1, "block size"),
    ("unknown field", HEAD + "%1 = NONE f32 ne=[4,2,1,1] nb=[4,16,32,32] color=red name=\"n\"\n", 3, 44,
     "unknown field"),
    ("duplicate field", HEAD + "%1 = NONE f32 ne=[4,2,1,1] ne=[4,2,1,1] name=\"n\"\n", 3, 28, "given twice"),
    ("fields out of order", HEAD + "%1 = NONE f32 nb=[4,16,32,32] ne=[4,2,1,1] name=\"n\"\n", 3, 31, "out of order"),
    ("missing strides", HEAD + "%1 = NONE f32 ne=[4,2,1,1] name=\"n\"\n", 3, None, "missing field 'nb'"),
    ("unknown param", HEAD + "%1 = RMS_NORM f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0] params={epsilon=1.0} "
     "name=\"n\"\n", 3, None, "no parameter 'epsilon'"),
    ("unknown flag", HEAD + "%1 = NONE f32 ne=[4,2,1,1] nb=[4,16,32,32] flags=input,shiny name=\"n\"\n", 3, 56,
     "unknown flag"),
    ("unterminated string", HEAD + "%1 = NONE f32 ne=[4,2,1,1] nb=[4,16,32,32] name=\"n\n", 3, 49, "unterminated"),
    ("bad escape", HEAD + "%1 = NONE f32 ne=[4,2,1,1] nb=[4,16,32,32] name=\"a\\q\"\n", 3, None, "bad escape"),
    ("odd hex data", HEAD + "%1 = NONE i32 ne=[1,1,1,1] nb=[4,4,4,4] data=hex:123 name=\"c\"\n", 3, None,
     "hex digits"),
    ("inline size mismatch", HEAD + "%1 = NONE i32 ne=[2,1,1,1] nb=[4,8,8,8] data=hex:01000000 name=\"c\"\n", 3, 1,
     "inline data has 4 bytes"),
    ("bad data kind", HEAD + "%1 = NONE f32 ne=[4,2,1,1] nb=[4,16,32,32] data=file:\"w\" name=\"n\"\n", 3, None,
     "data must be"),
    ("split dim out of range", HEAD + "%1 = NONE f32 ne=[4,2,1,1] nb=[4,16,32,32] data=gguf:\"w\"[split=4]\n", 3,
     None, "split dimension 4 is not 0..3"),
    ("split not closed", HEAD + "%1 = NONE f32 ne=[4,2,1,1] nb=[4,16,32,32] data=gguf:\"w\"[split=1 name=\"n\"\n",
     3, None, "expected ']'"),
    ("garbage line", HEAD + "hello world\n", 3, 1, "expected a tensor line"),
    ("meta after tensors", HEAD + "meta a=1\n", 3, 1, "meta lines must come before"),
    ("tab character", HEAD + "%1 = NONE\tf32\n", 3, 10, "tabs"),
    ("trailing empty source", HEAD + "%1 = DUP f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0,_] name=\"n\"\n", 3, None,
     "trailing empty source"),
    ("raw word out of range", HEAD + "%1 = DUP f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0] raw={16=0x1} name=\"n\"\n",
     3, None, "word index 16"),
    ("negative size", HEAD + "%1 = NONE f32 ne=[-4,2,1,1] nb=[4,16,32,32] name=\"n\"\n", 3, 1, "negative size"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_input_names_file_line_and_column(case: tuple) -> None:
    _, text, line, col, fragment = case
    with pytest.raises(ParseError) as ei:
        ggraph.parse(text, "bad.ggraph")
    e = ei.value
    assert e.file == "bad.ggraph" and e.line == line, str(e)
    if col is not None:
        assert e.col == col, str(e)
    assert fragment in e.message, str(e)
    assert str(e).startswith(f"bad.ggraph:{line}:")


def test_malformed_suite_is_large_enough() -> None:
    assert len({c[0] for c in MALFORMED}) >= 25


def test_non_ascii_file_reports_position(tmp_path: Path) -> None:
    p = tmp_path / "u.ggraph"
    p.write_bytes(HEAD.encode() + "%1 = NONE f32 ne=[4,2,1,1] nb=[4,16,32,32] name=\"é\"\n".encode())
    with pytest.raises(ParseError, match=r"u.ggraph:3:50: non-ASCII"):
        ggraph.load(p)


def test_cli_malformed_exits_2_without_traceback(tmp_path: Path) -> None:
    p = tmp_path / "bad.ggraph"
    p.write_text(HEAD + "%1 = MATMUL f32 ne=[4,2,1,1] nb=[4,16,32,32] src=[%0] name=\"n\"\n")
    r = run_ggc("show", str(p))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"{p}:3:6: unknown op 'MATMUL'" in r.stderr


def test_save_is_atomic(tmp_path: Path) -> None:
    g = ggraph.parse(GOOD)
    out = tmp_path / "g.ggraph"
    ggraph.save(g, out)
    assert out.read_text() == ggraph.write(g)
    assert not list(tmp_path.glob("*.tmp"))
