"""The CUDA emitter: a directory that builds alone with `make` and nvcc.

It reuses the C emitter's plan and tables (ggc.backends.c.emit) through the CUDA kernel ABI:
ggc_cuda_op_<op>(node, ctx) launches on the context's stream with device pointers. The runtime
(ggc_model_cuda.cu) keeps the arena in one cudaMalloc and replays each step as a CUDA graph.
Fused elementwise groups become generated kernels.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import subprocess
from collections.abc import Callable
from pathlib import Path

from ... import __version__
from ...compiler.arena import Plan
from ...compiler.passes import (
    ADD_EPILOGUES,
    GLU_PAIRS,
    NO_FUSION,
    ROW_HEADS,
    ROW_STORES,
    SIBLING_PRODUCTS,
    TWINS,
    Fusion,
    Group,
    root,
    rotated_product,
)
from ...errors import GgcError
from ...ir.graph import Graph, Tensor
from ..c.abi import KERNEL_DIR as C_KERNEL_DIR
from ..c.abi import c_type_name, op_param_words
from ..c.emit import (
    FUSABLE,
    FUSED_EXPR,
    RUNTIME_DIR,
    Call,
    CompiledC,
    KernelABI,
    _f,
    _index_expr,
    emit_program,
    plan_program,
    program_ranks,
    write_program_dir,
)
from .abi import find_nccl

CUDA_KERNEL_DIR = Path(__file__).parent / "kernels"
CUDA_RUNTIME_DIR = Path(__file__).parent / "runtime"
C_RUNTIME_FILES = ("ggc_model.h", "ggc_program.h", "ggc_gguf.c", "ggc_main.c")
DEFAULT_ARCHS = ("80", "86", "89", "90")
# What the CUDA kernels fuse: elementwise chains as C does; norms heading one, as a generated row
# kernel (_row_group_cuda; RMS_NORM only until NORM's generated path, mean then variance, has run on a
# GPU against ggml: no tiny model has a NORM); products storing through a residual ADD, gate/up
# products with their SWIGLU, and the matrix-vector products of one input (Q, K, V), each as one call
# of the matrix-product kernel, one of which may store V straight into its cache rows; ROPE storing K
# straight into its cache rows, and Q's and K's ROPE (twins) as one launch, each a ROPE call (_library_call);
# and those ROPEs inside the Q/K/V launch when they rotate adjacent pairs (rope_epilogues)
CUDA_FUSION = Fusion(elementwise=FUSABLE, heads=ROW_HEADS & frozenset({"RMS_NORM"}), epilogues=ADD_EPILOGUES,
                     glu_pairs=GLU_PAIRS, siblings=SIBLING_PRODUCTS, stores=ROW_STORES, sibling_stores=True,
                     twins=TWINS, rope_epilogues=True)


@functools.lru_cache(maxsize=1)
def cuda_symbols() -> frozenset[str]:
    """Functions the CUDA kernel library defines, read from its built object with nm."""
    from .abi import build_library

    lib = build_library()
    r = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True)
    if r.returncode != 0:
        raise GgcError(f"nm failed on {lib}: {r.stderr}")
    return frozenset(line.split()[-1] for line in r.stdout.splitlines() if line.strip())


def _has_cuda_symbol(name: str) -> bool:
    return name in cuda_symbols()


def _operand(p: Plan, s: Tensor) -> str:
    """An elementwise node's second operand at (i0, i1, i2, i3), with ggml's broadcast."""
    return f"(*(const float *)(arena + {p.offset_of(s)} + {_index_expr(s, True)}))"


def _chain_lines(p: Plan, nodes: list[Tensor], indent: str, held: dict[int, str] | None = None) -> list[str]:
    """v = op(v, b) for each elementwise node, b read with ggml's broadcast at (i0, i1, i2, i3), or from
    the register held[node id] names."""
    lines = []
    for t in nodes:
        b = ""
        if len(t.src) > 1 and t.src[1] is not None:
            b = (held or {}).get(t.id) or _operand(p, t.src[1])
        pr = t.params
        expr = FUSED_EXPR[t.op].format(b=b, m=_f(pr.get("s", 0.0)), s=_f(pr.get("b", 0.0)),
                                       lo=_f(pr.get("min", 0.0)), hi=_f(pr.get("max", 0.0)))
        lines.append(f"{indent}v = {expr};  /* {t.label()} {t.op} */")
    return lines


# A row group keeps up to this many elements a thread in registers; longer rows are read twice.
ROW_REGS = 16


# Weight types whose one-column products dot q8_0 activations (ggml's vec_dot_type; ggc_actq_of)
Q8_0_ACT_WEIGHTS = frozenset({"q4_0", "q5_0", "q8_0"})


def _quantizing_norms(p: Plan) -> set[int]:
    """Norm row groups that also write their one row as the q8_0 activations of the matrix-vector call
    right after them, which reads it (act_ready) instead of converting src1 itself: one row of whole
    32-element blocks, products of q8_0-activation weights."""
    return {a.id for a, b in zip(p.groups, p.groups[1:]) if _quantizes_for(a, b)}


def _quantizes_for(a: Group, b: Group) -> bool:
    """Norm row group a writes the q8_0 activations that group b, right after it, reads."""
    last, t = a.nodes[-1], b.nodes[0]
    return (a.fused and a.nodes[0].op in CUDA_FUSION.heads and t.op == "MUL_MAT" and t.src[1] is last
            and t.src[0].type.name in Q8_0_ACT_WEIGHTS and last.ne[1:] == (1, 1, 1) and last.ne[0] % 32 == 0
            and last.type.name == "f32")


def _quantizing_attention(p: Plan) -> set[int]:
    """FLASH_ATTN_EXT groups whose one output row the product right after them reads, whole, as its
    one column (the attention output projection at decode) with q8_0-activation weights: the attention
    call also writes that row as the product's q8a activations (quant_out), and the product reads them
    (act_ready) instead of a conversion launch of its own."""
    out = set()
    for a, b in zip(p.groups, p.groups[1:]):
        fa, t = a.nodes[0], b.nodes[0]
        if a.fused or fa.op != "FLASH_ATTN_EXT" or t.op != "MUL_MAT" or len(t.src) < 2 or t.src[1] is None:
            continue
        x = t.src[1]
        if (root(x) is fa and x.nelements == fa.nelements and x.ne[1:] == (1, 1, 1) and x.ne[0] % 32 == 0
                and x.is_contiguous() and fa.is_contiguous() and fa.type.name == "f32"
                and t.src[0].type.name in Q8_0_ACT_WEIGHTS):
            out.add(a.id)
    return out


def handoffs(p: Plan) -> dict[int, int]:
    """Groups that take the group before them through the work buffer, not through the arena: the
    product group's id -> the attention group's that wrote its quantized activations
    (_quantizing_attention). `ggc verify` runs each group on the reference's inputs, but such a
    product reads the attention's own result, so it is checked as the second half of one unit: on
    the attention's inputs, held to the looser limit of the two."""
    return {a + 1: a for a in _quantizing_attention(p)}


def _row_group_cuda(p: Plan, grp: Group, gi: int) -> list[str]:
    """A norm and the elementwise chain after it: one block per row, the row held in registers
    between the reduction and the chain (RMS_NORM: x * 1/sqrt(mean(x^2) + eps); NORM: (x - mean)
    * 1/sqrt(var + eps); both summed in f32, as the unfused kernel does). A quantizing norm
    (_quantizing_norms) also writes the row's q8_0 activations into the work buffer, a warp per
    32-element block (whole warps: nt is a multiple of 32), as ggc_k_quantize_q8a would."""
    head, last = grp.nodes[0], grp.nodes[-1]
    src = head.src[0]
    ne = last.ne
    ne0, rows = ne[0], ne[1] * ne[2] * ne[3]
    nt = min(1024, max(32, math.ceil(ne0 / 128) * 32))  # about 4 elements a thread, whole warps
    per = math.ceil(ne0 / nt)
    cache = per <= ROW_REGS
    eps = _f(head.params.get("eps", 0.0))
    name = f"group_{gi}_{grp.id}"
    load = f"*(const float *)(arena + {p.offset_of(src)} + {_index_expr(src, False)})"
    idx = (f"const int64_t i0 = threadIdx.x + (int64_t)k * {nt}; if (i0 >= {ne0}) break;")
    quant = grp.id + 1 < len(p.groups) and _quantizes_for(grp, p.groups[grp.id + 1])
    # the chain's constant operands (the norm's weight), held in registers: read before the PDL wait
    consts = [t for t in grp.nodes[1:] if cache and len(t.src) > 1 and t.src[1] is not None
              and t.src[1].is_leaf and t.src[1].data is not None]
    held = {t.id: f"c{j}[k]" for j, t in enumerate(consts)}
    lines = [f"/* fused rows: {' -> '.join(t.op for t in grp.nodes)} ({last.label()})"
             + (", and its q8_0 activations */" if quant else " */"),
             f"__global__ void __launch_bounds__({nt}) {name}_kernel(char *arena, char *work) {{",
             "    GGC_PDL_WAIT_UNLESS(1);" if consts else "    GGC_PDL_BEGIN();",
             "    __shared__ float red[32];",
             "    const int64_t r = blockIdx.x;",
             f"    const int64_t i1 = r % {ne[1]}, i2 = (r / {ne[1]}) % {ne[2]}, i3 = r / {ne[1] * ne[2]};"]
    if consts:
        regs = ", ".join(f"c{j}[{per}]" for j in range(len(consts)))
        lines += [f"    float {regs};  /* constants: before the wait */",
                  "#pragma unroll", f"    for (int k = 0; k < {per}; k++) {{", f"        {idx}"]
        lines += [f"        c{j}[k] = {_operand(p, t.src[1])};" for j, t in enumerate(consts)]
        lines += ["    }", "    GGC_PDL_AFTER_PREFETCH(1);"]
    lines += [f"    float x[{per if cache else 1}], s = 0.0f, mean = 0.0f;",
              "#pragma unroll", f"    for (int k = 0; k < {per}; k++) {{", f"        {idx}",
              f"        const float a = {load};"]
    lines += [f"        x[{'k' if cache else 0}] = a;"] if cache else []
    lines += ["        s += a;" if head.op == "NORM" else "        s = fmaf(a, a, s);", "    }",
              "    s = ggc_block_sum(s, red);"]
    if head.op == "NORM":
        lines += [f"    mean = s / {ne0}.0f;", "    s = 0.0f;",
                  "#pragma unroll", f"    for (int k = 0; k < {per}; k++) {{", f"        {idx}",
                  f"        const float a = {'x[k]' if cache else load} - mean;", "        s = fmaf(a, a, s);", "    }",
                  "    s = ggc_block_sum(s, red);"]
    lines += [f"    const float scale = 1.0f / sqrtf(s / {ne0}.0f + {eps}f);",
              "#pragma unroll", f"    for (int k = 0; k < {per}; k++) {{", f"        {idx}",
              f"        float v = ({'x[k]' if cache else load} - mean) * scale;  /* {head.label()} {head.op} */"]
    lines += _chain_lines(p, grp.nodes[1:], "        ", held)
    lines += [f"        *(float *)(arena + {p.offset_of(last)} + {_index_expr(last, False)}) = v;"]
    if quant:
        lines += ["        ggc_q8a_quant_warp<GGC_ACTQ_Q8_0>(v, threadIdx.x & 31, (int8_t *)work + (i0 & ~31),",
                  f"                                          (ggc_q8a_meta *)(work + {ne0}) + i0 / 32);"]
    lines += ["    }", "}",
              f"static void {name}(char *arena, const ggc_cuda_ctx *c) {{",
              f"    ggc_launch({name}_kernel, {rows}, {nt}, 0, c->stream, arena, (char *)c->work);", "}", ""]
    return lines


def _library_call(grp: Group) -> Call | None:
    """Fused groups that run as one call of a library kernel, whose hidden results never go to memory:
    - ROPE then the SET_ROWS that stores its rows: the SET_ROWS' indices are src[3], dst its cache;
    - two ROPEs of one kind (twins: Q's and K's): the second's input and result are src[4] and src[5],
      and when its SET_ROWS joined, src[5] is that cache and src[6] the indices;
    - MUL_MAT then the ADD that alone reads it: the ADD's other operand is src[2], added as it stores;
    - two matrix-vector products then the SWIGLU of them: the second weight is src[3], the kernel
      reads the shared input once and stores silu(first) * second;
    - matrix-vector products of one input: the others' weights and results are src[4], src[5] and
      src[6], src[7]; one launch covers the rows of all (_sibling_call)."""
    if grp.nodes[0].op in CUDA_FUSION.stores:
        rope, *rest = grp.nodes
        srcs = [rope.src[0], rope.src[1], rope.src[2] if len(rope.src) > 2 else None]
        if rest[0].op == "SET_ROWS":
            return Call(rope, rest[0], srcs + [rest[0].src[1]])
        twin, store = rest[0], rest[1] if len(rest) > 1 else None
        return Call(rope, rope, srcs + [None, twin.src[0], store if store is not None else twin,
                                        store.src[1] if store is not None else None])
    if grp.nodes[0].op not in CUDA_FUSION.epilogues | CUDA_FUSION.siblings:
        return None
    products = [t for t in grp.nodes if t.op == "MUL_MAT"]
    if (len(products) > 1 and grp.nodes[:len(products)] == products
            and all(t.op in ("SET_ROWS", "ROPE") for t in grp.nodes[len(products):])):
        return _sibling_call(products, grp.nodes[len(products):])
    if len(grp.nodes) == 3:
        a, b, glu = grp.nodes
        return Call(a, glu, [a.src[0], a.src[1], None, b.src[0]])
    mm, add = grp.nodes
    other = add.src[1] if add.src[0] is mm else add.src[0]
    return Call(mm, add, [mm.src[0], mm.src[1], other])


def _sibling_call(products: list[Tensor], rest: list[Tensor]) -> Call:
    """A sibling launch: products[0]'s weight and input are src[0], src[1], the others' weights and
    results src[4], src[5] and src[6], src[7]. A product's result is what the group finally writes of it:
    its ROPE's (joined by rope_epilogues), or the SET_ROWS that stores it (or its ROPE) into cache rows,
    whose indices are then src[8] (the second product's) or src[9] (the third's). With ROPEs, src[2] and
    src[3] are their positions and frequency factors (the ROPEs share them, as twins do), the op_params
    theirs, and word 0 (ROPE's unused n_past) says which products they rotate, a bit each."""
    result = {t.id: t for t in products}
    index: dict[int, Tensor] = {}
    roped = 0
    ropes = [t for t in rest if t.op == "ROPE"]
    for r in ropes:
        x = rotated_product(products, r)
        assert x is not None, r.label()
        result[x.id] = r
        roped |= 1 << products.index(x)
    for s in (t for t in rest if t.op == "SET_ROWS"):
        x = root(s.src[0])
        x = x if x.op == "MUL_MAT" else rotated_product(products, x)
        assert x is not None, s.label()
        result[x.id], index[x.id] = s, s.src[1]
    first = products[0]
    rope = ropes[0] if ropes else None
    srcs: list[Tensor | None] = [first.src[0], first.src[1], rope.src[1] if rope else None,
                                 rope.src[2] if rope and len(rope.src) > 2 else None]
    for t in products[1:]:
        srcs += [t.src[0], result[t.id]]
    srcs += [None] * (8 - len(srcs)) + [index.get(t.id) for t in products[1:]]
    words = None
    if rope is not None:
        words = op_param_words(rope)
        words[0] = roped
    return Call(first, result[first.id], srcs, words)


def _fused_group_cuda(p: Plan, grp: Group, gi: int) -> list[str]:
    """A generated kernel for a chain of elementwise ops (one thread per element), or for a norm
    heading one (one block per row)."""
    if grp.nodes[0].op in CUDA_FUSION.heads:
        return _row_group_cuda(p, grp, gi)
    first, last = grp.nodes[0], grp.nodes[-1]
    ne = last.ne
    n = ne[0] * ne[1] * ne[2] * ne[3]
    name = f"group_{gi}_{grp.id}"
    lines = [f"/* fused: {' -> '.join(t.op for t in grp.nodes)} ({last.label()}) */",
             f"__global__ void {name}_kernel(char *arena) {{",
             "    GGC_PDL_BEGIN();",
             "    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;",
             f"    if (i >= {n}) return;",
             f"    const int64_t i0 = i % {ne[0]}, i1 = (i / {ne[0]}) % {ne[1]}, i2 = (i / {ne[0] * ne[1]}) % {ne[2]}, "
             f"i3 = i / {ne[0] * ne[1] * ne[2]};",
             f"    float v = *(const float *)(arena + {p.offset_of(first.src[0])} + "
             f"{_index_expr(first.src[0], True)});"]
    lines += _chain_lines(p, grp.nodes, "    ")
    lines += [f"    *(float *)(arena + {p.offset_of(last)} + {_index_expr(last, False)}) = v;", "}",
              f"static void {name}(char *arena, const ggc_cuda_ctx *c) {{",
              f"    ggc_launch({name}_kernel, {(n + 255) // 256}, 256, 0, c->stream, arena);", "}", ""]
    return lines


def _act_reuse(p: Plan, uses_work: Callable[[str], bool]) -> set[int]:
    """MUL_MAT groups whose src1 the previous MUL_MAT converted already (the same tensor and weight
    type, so the same conversion: q8 activations for the matrix-vector path, f16 for the tensor-core
    one) with no group in between that writes the work buffer: Q, K and V of one norm, gate and up;
    and the calls right after a quantizing norm (_quantizing_norms) or attention (_quantizing_attention),
    which wrote their activations."""
    out: set[int] = {g + 1 for g in _quantizing_norms(p) | _quantizing_attention(p)}
    last: tuple[int, str] | None = None
    for grp in p.groups:
        t = grp.nodes[0]
        if grp.fused and t.op not in CUDA_FUSION.epilogues:
            continue  # generated kernels use no work memory
        if t.op == "MUL_MAT":  # alone or storing through a residual ADD: the same conversion
            key = (t.src[1].id, t.src[0].type.name)
            if key == last:
                out.add(grp.id)
            last = key
        elif uses_work(t.op):
            last = None
    return out


def regrouped_weights(plans: list[Plan]) -> dict[str, str]:
    """The weights (GGUF name -> the layout's enum) that the program keeps regrouped by 8 blocks, so
    that a block's quants are aligned 16-byte loads: those that only matrix products read, as their
    first source, in every graph, with rows of whole 8-block groups. q4_0 (GGC_TYPE_Q4_0R8: every
    matrix kernel reads it); q6_K (GGC_TYPE_Q6_KR8: the one-column kernel alone reads it, so only
    for products of one column, the output head at decode and at a prefill's last token)."""
    ok: dict[str, bool] = {}
    layout: dict[str, str] = {}
    for p in plans:
        users = p.graph.consumers()
        for t in p.graph.leafs:
            kind = t.type.name
            if "weight" not in t.flags or kind not in ("q4_0", "q6_K") or t.data is None:
                continue
            mine = [u for u in users[t.id] if u.id in p.live]
            good = (t.ne[0] % (256 if kind == "q4_0" else 2048) == 0 and t.is_contiguous()
                    and all(u.op == "MUL_MAT" and u.src[0] is t and u.src[1] is not t for u in mine)
                    and (kind == "q4_0" or all(u.src[1].ne[1:] == (1, 1, 1) for u in mine)))
            ok[t.data.name] = ok.get(t.data.name, True) and good
            layout[t.data.name] = "GGC_TYPE_Q4_0R8" if kind == "q4_0" else "GGC_TYPE_Q6_KR8"
    return {n: layout[n] for n, good in ok.items() if good}


def _const_weights(c: Call) -> list[str]:
    """A MUL_MAT call whose weights (src[0], and the SWIGLU's and siblings' src[3], src[4], src[6]) are
    all model constants from the GGUF, which no kernel writes: its one-column kernel may load them before
    the PDL wait, while the kernel before it still runs."""
    if c.op.op != "MUL_MAT":
        return []
    weights = [s for i, s in enumerate(c.srcs) if i in (0, 3, 4, 6) and s is not None]
    return ["w_const = 1"] if all(s.is_leaf and s.data is not None for s in weights) else []


CUDA_ABI = KernelABI(op_prefix="ggc_cuda_op_", work_prefix="ggc_cuda_work_", ctx_type="const ggc_cuda_ctx",
                     linkage='extern "C" ', has_symbol=_has_cuda_symbol, fused=_fused_group_cuda,
                     act_reuse=_act_reuse, call_node=_library_call, ctx_fields=_const_weights,
                     out_quant=_quantizing_attention)

MAKEFILE = """\
# Build the generated CUDA program: `make` gives ./{name} (a CLI) and lib{name}.so (the C API).
# ARCH picks the GPU architectures (compute capabilities): `make ARCH=90` builds for Hopper alone.
# KERNELS=/path/libggc_cuda.so links a kernel library built before instead of compiling kernels/.
NVCC ?= nvcc
ARCH ?= {archs}
NVFLAGS ?= -O3
KERNELS ?=
# NCCL=1 (the default of a program of several ranks): the ranks' collectives through NCCL, found in
# NCCL_HOME (include/nccl.h, lib/libnccl.so.2; pip's nvidia-nccl-cu13 package has both)
NCCL ?= {nccl}
NCCL_HOME ?= {nccl_home}
override NVFLAGS += -std=c++17 -Ikernels -I. $(foreach a,$(ARCH),-gencode arch=compute_$(a),code=sm_$(a))
SRC = program.cu ggc_model_cuda.cu ggc_gguf.c kernels/ggc_core.c
ifeq ($(KERNELS),)
SRC += $(wildcard kernels/*.cu)
else
LINK = $(KERNELS) -Xlinker -rpath=$(dir $(KERNELS))
endif
ifeq ($(NCCL),1)
override NVFLAGS += -DGGC_NCCL $(if $(NCCL_HOME),-I$(NCCL_HOME)/include)
LINK += $(if $(NCCL_HOME),-L$(NCCL_HOME)/lib -Xlinker -rpath=$(NCCL_HOME)/lib) -l:libnccl.so.2
endif

all: {name} lib{name}.so

{name}: $(SRC) ggc_main.c
\t$(NVCC) $(NVFLAGS) $^ $(LINK) -o $@

lib{name}.so: $(SRC)
\t$(NVCC) $(NVFLAGS) -Xcompiler -fPIC -shared $^ $(LINK) -o $@

clean:
\trm -f {name} lib{name}.so

.PHONY: all clean
"""

README = """\
# {name}: generated by ggc {version} for CUDA

Compiled from `{source}`: graphs {graphs}. Build with `make` (needs only the CUDA toolkit;
`make ARCH=90` builds for one architecture, faster), then:

    ./{name} MODEL.gguf -i inp_tokens=tokens.bin ... -o result_output=logits.bin

The arena is one cudaMalloc of {arena} bytes{host}. Each graph is recorded once as a CUDA graph and
replayed. The C API is in `ggc_model.h`; tensors live on the GPU (ggc_model_write/read copy).
{ranks_note}"""

RANKS_NOTE = """
This program is tensor-parallel: {ranks} processes (ranks), one a GPU of this host, run it, each
holding its share of the split weights; their all-reduces go through NCCL (`make NCCL_HOME=...`
if nccl.h is not on the compiler's paths). `ggc run --ranks {ranks}` starts them; by hand, give
each process GGC_RANK (0..{last}), GGC_RANKS={ranks} and GGC_NCCL_ID (one new file path, the same
for all: rank 0 writes the NCCL id there):

    for r in $(seq 0 {last}); do
        GGC_RANK=$r GGC_RANKS={ranks} GGC_NCCL_ID=/tmp/nccl-id.$$ ./{name} MODEL.gguf ... &
    done; wait
"""


def cuda_plans(graph: Graph | list[Graph], debug: bool = False, fuse: bool = True,
               graph_names: list[str] | None = None) -> tuple[list[Graph], list[str], list[Plan]]:
    """The graphs' plans with the CUDA target's fusion rules (norm heads, residual ADD epilogues,
    SWIGLU pairs) on one shared arena."""
    return plan_program(graph, debug, CUDA_FUSION if fuse else NO_FUSION, graph_names, host_weight=host_resident)


def host_resident(p: Plan, w: Tensor) -> bool:
    """A weight that only GET_ROWS looks up, as a single-node group (a library call, given its pointer
    through the node table, never arena + offset): the token embedding. It stays in pinned host
    memory and the GPU reads the few rows a step needs over the bus, as llama.cpp keeps its input
    layer on the CPU: for a 128k vocabulary at F16 that is 500 MiB of GPU memory saved."""
    users = [u for u in p.graph.consumers()[w.id] if u.id in p.live]
    singles = {g.nodes[0].id for g in p.groups if len(g.nodes) == 1}
    return bool(users) and all(u.op == "GET_ROWS" and u.src[0] is w and u.id in singles for u in users)


def compile_cuda(graph: Graph | list[Graph], out: str | Path, *, name: str = "model", debug: bool = False,
                 fuse: bool = True, source: str = "", graph_names: list[str] | None = None,
                 archs: tuple[str, ...] = DEFAULT_ARCHS, reuse_existing: bool = False,
                 regroup_q4_0: bool = True) -> CompiledC:
    """compile_c's twin for CUDA: the same plan and tables, CUDA kernels and runtime. regroup_q4_0:
    q4_0 weights that only matrix products read, and q6_K ones that only one-column products read,
    are loaded regrouped (see regrouped_weights)."""
    out = Path(out)
    graphs, names, plans = cuda_plans(graph, debug, fuse, graph_names)
    ranks = program_ranks(plans)
    if reuse_existing and out.is_dir():
        return CompiledC(out, plans, names)
    source = source or str(graphs[0].meta.get("model", "a .ggraph"))
    regroup = regrouped_weights(plans) if regroup_q4_0 else {}

    def type_name(t: Tensor) -> str:
        if t.is_leaf and t.data is not None and t.data.name in regroup:
            return regroup[t.data.name]
        return c_type_name(t.type.name)

    abi = dataclasses.replace(CUDA_ABI, type_name=type_name)
    program, _ = emit_program(plans, names, source, abi=abi, header="ggc_cuda.cuh")
    program = program.replace('#include "ggc_cuda.cuh"',
                              '#include "ggc_cuda.cuh"\n#include "ggc_cuda_quants.cuh"\n#include "ggc_program.h"')
    copies = [(C_KERNEL_DIR / f, f"kernels/{f}") for f in ("ggc.h", "ggc_core.c")]
    copies += [(f, f"kernels/{f.name}") for f in sorted(CUDA_KERNEL_DIR.iterdir())
               if f.suffix in (".cu", ".cuh") and "harness" not in f.name]
    copies += [(RUNTIME_DIR / f, f) for f in C_RUNTIME_FILES]
    copies.append((CUDA_RUNTIME_DIR / "ggc_model_cuda.cu", "ggc_model_cuda.cu"))
    readme = README.format(name=name, version=__version__, source=source, graphs=", ".join(names),
                           arena=plans[0].size - plans[0].host_size,
                           host=f", and {plans[0].host_size} bytes of pinned host memory for the weights that only "
                                "GET_ROWS reads (the token embedding)" if plans[0].host_size else "",
                           ranks_note=RANKS_NOTE.format(ranks=ranks, last=ranks - 1, name=name) if ranks > 1 else "")
    makefile = MAKEFILE.format(name=name, archs=" ".join(archs), nccl=int(ranks > 1),
                               nccl_home=(find_nccl() or "") if ranks > 1 else "")
    write_program_dir(out, copies, {"program.cu": program, "Makefile": makefile, "README.md": readme})
    return CompiledC(out, plans, names)
