"""The op table: the one place that knows a ggml op.

For each op: its name (as ggml_op_name prints it), how its op_params words decode, whether it is
a view (costs no kernel: only an offset and strides), how many sources it takes, where known its
shape rule, and how it carries a tensor-parallel split (the rule names of compiler/partition.py).
Ops absent from the table are still carried: their op_params travel as raw words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

N_PARAM_WORDS = 16  # GGML_MAX_OP_PARAMS / sizeof(int32_t)
MAX_SRC = 10
MAX_DIMS = 4

# Param kinds: i32 and f32 are plain words; "unary" and "glu" are enums that ggml names
# (ggml_unary_op_name, ggml_glu_op_name), so they are written by name and mapped to numbers
# against the loaded library, never by a fixed enum table.
PARAM_KINDS = ("i32", "f32", "unary", "glu")

Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class Param:
    name: str
    word: int
    kind: str = "i32"


@dataclass(frozen=True)
class OpDef:
    name: str
    params: tuple[Param, ...] = ()
    view: bool = False
    n_src: tuple[int, int] = (1, 1)  # min, max number of sources (trailing empty slots trimmed)
    shape: Callable[[list[Shape]], Shape | None] | None = field(default=None, compare=False)
    # how a source split across ranks goes through the op (compiler/partition.py): "map" (element by
    # element, later sources broadcast), "rows" (works along dim 0 only), "rope", "matmul",
    # "matmul_id", "attention", "get_rows", "set_rows", "view", "copy"; "" = it cannot
    split: str = ""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def _p(spec: str) -> tuple[Param, ...]:
    """'n_dims:1 freq_base:5f' -> Params; suffix f = f32, u = unary, g = glu."""
    out = []
    kinds = {"f": "f32", "u": "unary", "g": "glu"}
    for item in spec.split():
        name, w = item.split(":")
        kind = "i32"
        if w[-1] in kinds:
            kind, w = kinds[w[-1]], w[:-1]
        out.append(Param(name, int(w), kind))
    return tuple(out)


def _same(s: list[Shape]) -> Shape:
    return s[0]


def _mul_mat(s: list[Shape]) -> Shape:
    a, b = s[0], s[1]
    return (a[1], b[1], b[2], b[3])


def _mul_mat_id(s: list[Shape]) -> Shape:
    a, b, ids = s[0], s[1], s[2]
    return (a[1], ids[0], b[2], 1)


def _get_rows(s: list[Shape]) -> Shape:
    a, b = s[0], s[1]
    return (a[0], b[0], b[1], b[2])


def _sum_rows(s: list[Shape]) -> Shape:
    return (1, s[0][1], s[0][2], s[0][3])


def _flash_attn(s: list[Shape]) -> Shape:
    q, v = s[0], s[2]
    return (v[0], q[2], q[1], q[3])


def _glu(s: list[Shape]) -> Shape:
    a = s[0]
    return a if len(s) > 1 else (a[0] // 2, a[1], a[2], a[3])


_ROPE = _p(
    "n_past:0 n_dims:1 mode:2 n_ctx:3 n_ctx_orig:4 freq_base:5f freq_scale:6f ext_factor:7f "
    "attn_factor:8f beta_fast:9f beta_slow:10f section0:11 section1:12 section2:13 section3:14 "
    "n_offs:15"
)
_VIEW_SET = _p("nb1:0 nb2:1 nb3:2 offset:3 inplace:4")

_DEFS = [
    OpDef("NONE", n_src=(0, 0)),
    OpDef("DUP", shape=_same, split="copy"),
    OpDef("ADD", n_src=(2, 2), shape=_same, split="map"),
    OpDef("ADD_ID", n_src=(3, 3), shape=_same),
    OpDef("ADD1", n_src=(2, 2), shape=_same),
    OpDef("ACC", _VIEW_SET, n_src=(2, 2), shape=_same),
    OpDef("SUB", n_src=(2, 2), shape=_same, split="map"),
    OpDef("MUL", n_src=(2, 2), shape=_same, split="map"),
    OpDef("DIV", n_src=(2, 2), shape=_same, split="map"),
    OpDef("SQR", shape=_same, split="map"),
    OpDef("SQRT", shape=_same, split="map"),
    OpDef("LOG", shape=_same, split="map"),
    OpDef("SIN", shape=_same, split="map"),
    OpDef("COS", shape=_same, split="map"),
    OpDef("SUM", shape=lambda s: (1, 1, 1, 1)),
    OpDef("SUM_ROWS", shape=_sum_rows),
    OpDef("CUMSUM", shape=_same),
    OpDef("MEAN", shape=_sum_rows),
    OpDef("ARGMAX", shape=lambda s: (s[0][1], 1, 1, 1)),
    OpDef("REPEAT", n_src=(2, 2), shape=lambda s: s[1]),
    OpDef("CONCAT", _p("dim:0"), n_src=(2, 2)),
    OpDef("NORM", _p("eps:0f"), shape=_same, split="rows"),
    OpDef("RMS_NORM", _p("eps:0f"), shape=_same, split="rows"),
    OpDef("GROUP_NORM", _p("n_groups:0 eps:1f"), shape=_same),
    OpDef("L2_NORM", _p("eps:0f"), shape=_same, split="rows"),
    OpDef("MUL_MAT", _p("prec:0 hint:1 prec_src1:3"), n_src=(2, 2), shape=_mul_mat, split="matmul"),
    OpDef("MUL_MAT_ID", _p("prec:0 hint:1 prec_src1:3"), n_src=(3, 3), shape=_mul_mat_id, split="matmul_id"),
    OpDef("OUT_PROD", n_src=(2, 2)),
    OpDef("SCALE", _p("s:0f b:1f"), shape=_same, split="map"),
    OpDef("SET", _VIEW_SET, n_src=(2, 2), shape=_same),
    OpDef("CPY", n_src=(2, 2), view=True),  # result is a view of its destination (src 1)
    OpDef("CONT", split="copy"),  # ggml_cont_2d..4d reshape while copying: only the element count is fixed
    OpDef("RESHAPE", view=True, split="view"),
    OpDef("VIEW", _p("offset:0"), view=True, split="view"),
    OpDef("PERMUTE", _p("axis0:0 axis1:1 axis2:2 axis3:3"), view=True, split="view"),
    OpDef("TRANSPOSE", view=True, split="view"),
    OpDef("GET_ROWS", n_src=(2, 2), shape=_get_rows, split="get_rows"),
    # writes the rows of src 0 into src 2 at the indices src 1, and returns a view of src 2
    OpDef("SET_ROWS", n_src=(2, 3), view=True, split="set_rows"),
    OpDef("DIAG_MASK_INF", _p("n_past:0"), shape=_same),
    OpDef("DIAG_MASK_ZERO", _p("n_past:0"), shape=_same),
    OpDef("SOFT_MAX", _p("scale:0f max_bias:1f"), n_src=(1, 3), shape=_same, split="rows"),
    OpDef("ROPE", _ROPE, n_src=(2, 3), shape=_same, split="rope"),
    OpDef("CLAMP", _p("min:0f max:1f"), shape=_same, split="map"),
    OpDef("IM2COL", _p("s0:0 s1:1 p0:2 p1:3 d0:4 d1:5 is_2d:6"), n_src=(2, 2)),
    OpDef("CONV_TRANSPOSE_1D", _p("s0:0 p0:1 d0:2"), n_src=(2, 2)),
    OpDef("POOL_1D", _p("op:0 k0:1 s0:2 p0:3")),
    OpDef("POOL_2D", _p("op:0 k0:1 k1:2 s0:3 s1:4 p0:5 p1:6")),
    OpDef("UPSCALE", _p("mode:0")),
    OpDef("PAD", _p("lp0:0 rp0:1 lp1:2 rp1:3 lp2:4 rp2:5 lp3:6 rp3:7 circular:8")),
    OpDef("PAD_REFLECT_1D", _p("p0:0 p1:1")),
    OpDef("ROLL", _p("shift0:0 shift1:1 shift2:2 shift3:3"), shape=_same),
    OpDef("ARANGE", _p("start:0f stop:1f step:2f"), n_src=(0, 0)),
    OpDef("TIMESTEP_EMBEDDING", _p("dim:0 max_period:1")),
    OpDef("ARGSORT", _p("order:0"), shape=_same),
    OpDef("TOP_K", _p("k:0")),
    OpDef("LEAKY_RELU", _p("negative_slope:0f"), shape=_same, split="map"),
    OpDef("TRI", _p("type:0"), shape=_same),
    OpDef("FILL", _p("c:0f"), shape=_same),
    OpDef("FLASH_ATTN_EXT", _p("scale:0f max_bias:1f logit_softcap:2f prec:3 n_kv_max:4"),
          n_src=(3, 5), shape=_flash_attn, split="attention"),
    OpDef("SSM_CONV", n_src=(2, 2)),
    OpDef("SSM_SCAN", n_src=(6, 7)),
    OpDef("WIN_PART", _p("npx:0 npy:1 w:2")),
    OpDef("WIN_UNPART", _p("w:0")),
    OpDef("GET_REL_POS"),
    OpDef("RWKV_WKV6", n_src=(6, 6)),
    OpDef("GATED_LINEAR_ATTN", _p("scale:0f"), n_src=(5, 5)),
    OpDef("RWKV_WKV7", n_src=(7, 7)),
    OpDef("UNARY", _p("op:0u alpha_n:1f alpha_p:2f beta:3f eps:4f"), shape=_same, split="map"),
    OpDef("GLU", _p("op:0g swapped:1 alpha:2f limit:3f"), n_src=(1, 2), shape=_glu, split="map"),
    # ggc's own, not ggml's: the element-wise sum of src 0 over all ranks, which every rank receives
    # (a tensor-parallel program, compiler/partition.py)
    OpDef("ALL_REDUCE", shape=_same),
    # ggc's own: the rank's part (src 0, split along `dim` into equal parts in rank order) made whole
    # on every rank; the result is contiguous
    OpDef("ALL_GATHER", _p("dim:0")),
]

# Ops that appear in ggml's enum but not in inference graphs ggc targets: known by name, any
# sources, params carried raw.
_NAMED_ONLY = """COUNT_EQUAL REPEAT_BACK SILU_BACK RMS_NORM_BACK GET_ROWS_BACK DIAG SOFT_MAX_BACK ROPE_BACK
IM2COL_BACK IM2COL_3D COL2IM_1D CONV_2D CONV_3D CONV_2D_DW CONV_TRANSPOSE_2D POOL_2D_BACK FLASH_ATTN_BACK
ADD_REL_POS SOLVE_TRI GATED_DELTA_NET LIGHTNING_INDEXER DSV4_HC_COMB DSV4_HC_PRE DSV4_HC_POST MAP_CUSTOM1
MAP_CUSTOM2 MAP_CUSTOM3 CUSTOM CROSS_ENTROPY_LOSS CROSS_ENTROPY_LOSS_BACK OPT_STEP_ADAMW OPT_STEP_SGD""".split()
_DEFS += [OpDef(n, n_src=(0, MAX_SRC)) for n in _NAMED_ONLY]

OPS: dict[str, OpDef] = {d.name: d for d in _DEFS}

# An op this table does not know (a newer ggml) is still exported: written with this prefix,
# any sources, params raw. The prefix keeps a misspelt known op from passing as an opaque one.
OPAQUE_PREFIX = "x:"


def lookup(name: str) -> OpDef:
    """The op's definition; an op the table does not know gets a permissive one (raw params)."""
    d = OPS.get(name)
    if d is None:
        return OpDef(name, n_src=(0, MAX_SRC))
    return d


def is_known(name: str) -> bool:
    return name in OPS
