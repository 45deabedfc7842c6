"""The C emitter: a directory that builds alone with `make` and gcc.

    DIR/program.c      generated: the arena layout, every tensor's shape, strides and offset, the
                       nodes' op_params, and one call per kernel group (fused groups get a loop)
    DIR/kernels/       the kernel library (copied from the package)
    DIR/ggc_model.[ch] the runtime and the C API; DIR/ggc_gguf.c the GGUF loader; DIR/ggc_main.c a CLI
    DIR/Makefile, DIR/README.md

Only libc and libm are needed; `make OPENMP=1` adds OpenMP threads. A tensor-parallel program
(the graph's meta `ranks` > 1) builds with mpicc (`make MPI=1`, its default) and runs under mpirun.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ... import __version__
from ...compiler.arena import Plan, check, plan_shared
from ...compiler.passes import NO_FUSION, Fusion, Group
from ...errors import GgcError
from ...ir import params as prm
from ...ir.graph import Graph, Tensor
from .abi import KERNEL_DIR, c_type_name, kernel_name, load_library, op_param_words

RUNTIME_DIR = Path(__file__).parent / "runtime"
RUNTIME_FILES = ("ggc_model.h", "ggc_program.h", "ggc_model.c", "ggc_gguf.c", "ggc_main.c")
# ops a fused group computes element by element in generated code: C expression of (v, b, params)
FUSED_EXPR = {
    "ADD": "v + {b}",
    "SUB": "v - {b}",
    "MUL": "v * {b}",
    "DIV": "v / {b}",
    "SCALE": "{s}f == 0.0f ? v * {m}f : v * {m}f + {s}f",
    "CLAMP": "v < {lo}f ? {lo}f : (v > {hi}f ? {hi}f : v)",
}


@dataclass
class CompiledC:
    out: Path
    plans: list[Plan]  # one per graph, sharing one arena
    names: list[str]

    @property
    def plan(self) -> Plan:
        return self.plans[0]

    @property
    def ranks(self) -> int:
        """The processes the program runs as (tensor parallelism); 1 for most."""
        return program_ranks(self.plans)


def program_ranks(plans: list[Plan]) -> int:
    """The ranks of a program: its graphs' meta `ranks` (absent = 1), which must agree."""
    ranks = {int(p.graph.meta.get("ranks", 1)) for p in plans}
    if len(ranks) != 1 or min(ranks) < 1:
        raise GgcError(f"the graphs of one program must have one number of ranks (>= 1), not {sorted(ranks)}")
    return ranks.pop()


def split_weights(plans: list[Plan]) -> dict[str, int]:
    """The weights split across ranks: GGUF name -> the dimension split."""
    out: dict[str, int] = {}
    for p in plans:
        for name, dim in p.graph.split_weights().items():
            if out.setdefault(name, dim) != dim:
                raise GgcError(f"GGUF tensor {name!r} is split along dimension {dim} in one graph of the program "
                               f"and {out[name]} in another")
    return out


def has_symbol(name: str) -> bool:
    """Whether the kernel library defines this function (asked of the built library: kernels may
    be defined by macros, which a text search would miss)."""
    return hasattr(load_library(), name)


@dataclass(frozen=True)
class Call:
    """One library kernel call: op's kernel and op_params (or the op_params words `words`), writing dst
    from srcs."""

    op: Tensor
    dst: Tensor
    srcs: list[Tensor | None]
    words: list[int] | None = None


@dataclass(frozen=True)
class KernelABI:
    """How generated code calls a target's kernels: ggc_op_<op>(node, work) for C."""

    op_prefix: str = "ggc_op_"
    work_prefix: str = "ggc_work_"
    ctx_type: str = "ggc_work"
    linkage: str = ""  # 'extern "C" ' where the program is C++
    has_symbol: Callable[[str], bool] = has_symbol
    fused: Callable[[Plan, Group, int], list[str]] | None = None  # a fused group's code, or None: no fusion
    # groups whose kernel may take its converted inputs from the work buffer as an earlier group
    # left them (the call then gets a context with act_ready set), or None: the target has no such reuse
    act_reuse: Callable[[Plan, Callable[[str], bool]], set[int]] | None = None
    type_name: Callable[[Tensor], str] = lambda t: c_type_name(t.type.name)  # the C enum a tensor's table row names
    # a fused group that runs as one library kernel call: (the op whose kernel and params it uses,
    # the node's dst, its sources), or None: the group is generated code (abi.fused)
    call_node: Callable[[Group], Call | None] | None = None
    # context fields a library call sets beyond the defaults ("w_const = 1"), or None: none
    ctx_fields: Callable[[Call], list[str]] | None = None
    # groups whose library call also leaves its result as the next group's converted input in the work
    # buffer (the call then gets a context with quant_out set; the next is in act_reuse), or None
    out_quant: Callable[[Plan], set[int]] | None = None

    def calls(self, p: Plan) -> dict[int, Call]:
        """Each group that is a library kernel call, by group id: every unfused node, and the fused
        groups the target runs as one call."""
        out: dict[int, Call] = {}
        for grp in p.groups:
            if not grp.fused:
                t = grp.nodes[0]
                out[grp.id] = Call(t, t, list(t.src))
            elif self.call_node is not None and (c := self.call_node(grp)) is not None:
                out[grp.id] = c
        return out

    def kernel(self, t: Tensor) -> str:
        return self.op_prefix + kernel_name(t)[len("ggc_op_"):]


C_ABI = KernelABI(fused=lambda p, grp, gi: _fused_group(p, grp, gi))


def c_string(s: str) -> str:
    out = ['"']
    for b in s.encode("utf-8"):
        ch = chr(b)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= b < 0x7F and ch != "?":  # '?' avoids trigraphs
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    out.append('"')
    return "".join(out)


def _f(x: float) -> str:
    return repr(float(x)) if x == x and abs(x) != float("inf") else ("NAN" if x != x else ("INFINITY" if x > 0 else
                                                                                         "-INFINITY"))


def _role(p: Plan, t: Tensor, outputs: set[int]) -> str:
    if t.view_src is not None:
        return "GGC_ROLE_VIEW"
    region = p.region_of(t)
    if region == "weights":
        return "GGC_ROLE_WEIGHT"
    if region == "state":
        return "GGC_ROLE_STATE"
    if region == "io":
        return "GGC_ROLE_INPUT"
    return "GGC_ROLE_OUTPUT" if t.id in outputs else "GGC_ROLE_SCRATCH"


def emit_graph(p: Plan, gi: int, abi: KernelABI = C_ABI) -> tuple[list[str], dict[int, int], dict[int, Call]]:
    """One graph's tables and functions, all static, named with the graph's index; also its tensor
    indices and its library kernel calls (by group id, in node-table order)."""
    g = p.graph
    outputs = {t.id for t in g.outputs()}
    hidden = {t.id for grp in p.groups for t in grp.nodes if t not in grp.outputs}
    tensors = [t for t in g.tensors if t.id not in hidden and p.has_memory(t)
               and (t.id in p.live or (t.is_leaf and root_is_live(p, t)))]
    tindex = {t.id: i for i, t in enumerate(tensors)}
    lines = [f"/* ---- graph {gi}: {g.meta.get('n_tokens', '?')} tokens */",
             f"static const ggc_tensor_info T{gi}[] = {{"]
    for t in tensors:
        lines.append(f"    {{{t.id}, {c_string(t.name)}, {abi.type_name(t)}, {{{', '.join(map(str, t.ne))}}}, "
                     f"{{{', '.join(map(str, t.nb))}}}, {p.offset_of(t)}, {t.nbytes}, {_role(p, t, outputs)}}},")
    lines.append("};")
    calls = abi.calls(p)
    nindex = {gid: i for i, gid in enumerate(calls)}  # node index of each called group
    lines.append(f"static const ggc_node_desc N{gi}[] = {{")
    for c in calls.values():
        t = c.op
        fn = abi.kernel(t)
        if not abi.has_symbol(fn):
            raise GgcError(f"{t.label()}: the {'C' if abi is C_ABI else 'CUDA'} backend has no kernel for "
                           f"{t.op_label()}")
        srcs = [tindex[s.id] if s is not None else -1 for s in c.srcs] + [-1] * (10 - len(c.srcs))
        words = ", ".join(str(prm.i32_from_word(w)) for w in (c.words if c.words is not None else op_param_words(t)))
        note = f"{t.label()} {t.op}" + (f" -> {c.dst.label()}" if c.dst is not t else "")
        lines.append(f"    /* {note} */ {{{tindex[c.dst.id]}, {{{', '.join(map(str, srcs))}}}, {{{words}}}}},")
    if not calls:
        lines.append("    {0, {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1}, {0}},")
    lines += ["};", ""]
    for grp in p.groups:
        if grp.fused and grp.id not in calls:
            assert abi.fused is not None, "a fused group on a target without fusion"
            lines += abi.fused(p, grp, gi)
    lines.append(f"static size_t work_size_{gi}(const ggc_node *n) {{")
    lines.append("    size_t w = 0, s;")
    for gid, c in calls.items():
        if abi.has_symbol(f"{abi.work_prefix}{c.op.op.lower()}"):
            lines.append(f"    s = {abi.work_prefix}{c.op.op.lower()}(&n[{nindex[gid]}]);  if (s > w) w = s;")
    lines += ["    (void)n; (void)s;", "    return w;", "}", ""]
    lines.append(f"static void run_group_{gi}(int g, ggc_node *n, void *ctx, char *arena) {{")
    lines += [f"    {abi.ctx_type} *w = ({abi.ctx_type} *)ctx;", "    (void)n; (void)w; (void)arena;",
              "    switch (g) {"]
    reuse = abi.act_reuse(p, lambda op: abi.has_symbol(abi.work_prefix + op.lower())) if abi.act_reuse else set()
    quant_out = abi.out_quant(p) if abi.out_quant else set()
    for grp in p.groups:
        c = calls.get(grp.id)
        if c is None:
            lines.append(f"    case {grp.id}: group_{gi}_{grp.id}(arena, w); break;")
            continue
        call = f"{abi.kernel(c.op)}(&n[{nindex[grp.id]}]"
        fields = ((["act_ready = 1"] if grp.id in reuse else []) + (["quant_out = 1"] if grp.id in quant_out else [])
                  + (abi.ctx_fields(c) if abi.ctx_fields else []))
        if fields:
            sets = "".join(f"c.{f}; " for f in fields)
            lines.append(f"    case {grp.id}: {{ {abi.ctx_type.removeprefix('const ')} c = *w; {sets}"
                         f"{call}, &c); break; }}  /* {c.op.label()}"
                         + (": src1 converted */" if grp.id in reuse else " */"))
        else:
            lines.append(f"    case {grp.id}: {call}, w); break;  /* {c.op.label()} */")
    lines += ["    default: break;", "    }", "}", ""]
    return lines, tindex, calls


def emit_program(plans: list[Plan], names: list[str], source: str, abi: KernelABI = C_ABI,
                 header: str = "ggc_program.h") -> tuple[str, list[dict[int, int]]]:
    """program.c: the arena, then each graph's tensors, nodes and kernel calls, then the graph table."""
    p0 = plans[0]
    ranks = program_ranks(plans)
    splits = split_weights(plans)
    body: list[str] = []
    tindexes, n_nodes = [], []
    used: set[str] = set()
    works: set[str] = set()
    for gi, p in enumerate(plans):
        lines, tindex, calls = emit_graph(p, gi, abi)
        body += lines
        tindexes.append(tindex)
        n_nodes.append(len(calls))
        for c in calls.values():
            used.add(abi.kernel(c.op))
            if abi.has_symbol(f"{abi.work_prefix}{c.op.op.lower()}"):
                works.add(c.op.op.lower())
    head = [
        f"/* Generated by ggc {__version__} from {source}. Do not edit: recompile the graph instead. */",
        "#include <math.h>",
        f'#include "{header}"',
        "",
        f"{abi.linkage}const size_t GGC_ARENA_SIZE = {p0.size};",
        f"{abi.linkage}const size_t GGC_STATE_OFFSET = {p0.region_offset['state']};",
        f"{abi.linkage}const size_t GGC_STATE_SIZE = {p0.region_size['state']};",
        f"{abi.linkage}const size_t GGC_HOST_SIZE = {p0.host_size};",
        f"{abi.linkage}const int GGC_RANKS = {ranks};",
        f"{abi.linkage}const ggc_split_info GGC_SPLITS[] = {{"
        + (", ".join(f"{{{c_string(n)}, {d}}}" for n, d in splits.items()) or "{NULL, -1}") + "};",
        f"{abi.linkage}const int GGC_N_SPLITS = {len(splits)};",
        "",
    ]
    head += [f"{abi.linkage}void {fn}(const ggc_node *node, {abi.ctx_type} *work);" for fn in sorted(used)]
    head += [f"{abi.linkage}size_t {abi.work_prefix}{op}(const ggc_node *node);" for op in sorted(works)]
    tail = [f"{abi.linkage}const ggc_graph_desc GGC_GRAPHS[] = {{"]
    for gi, (p, name) in enumerate(zip(plans, names)):
        tail.append(f"    {{{c_string(name)}, T{gi}, {len(tindexes[gi])}, N{gi}, {n_nodes[gi]}, {len(p.groups)}, "
                    f"work_size_{gi}, run_group_{gi}}},")
    tail += ["};", f"{abi.linkage}const int GGC_N_GRAPHS = {len(plans)};", ""]
    return "\n".join(head + [""] + body + tail), tindexes


def root_is_live(p: Plan, t: Tensor) -> bool:
    return any(u.id in p.live for u in p.graph.consumers()[t.id])


def _index_expr(t: Tensor, bcast: bool) -> str:
    """Byte offset of element (i0..i3) of t, repeating t along dims where it is smaller (ggml's broadcast)."""
    terms = []
    for k, v in enumerate(("i0", "i1", "i2", "i3")):
        idx = f"({v} % {t.ne[k]})" if bcast and t.ne[k] != 0 else v
        terms.append(f"{idx} * {t.nb[k]}")
    return " + ".join(terms)


def _fused_group(p: Plan, grp: Group, gi: int) -> list[str]:
    """A loop computing a chain of elementwise ops per element: the intermediates stay in a register."""
    first, last = grp.nodes[0], grp.nodes[-1]
    lines = [f"/* fused: {' -> '.join(f'{t.op}' for t in grp.nodes)} ({last.label()}) */",
             f"static void group_{gi}_{grp.id}(char *arena, ggc_work *w) {{", "    (void)w;"]
    lines.append(f"    for (int64_t i3 = 0; i3 < {last.ne[3]}; i3++)")
    lines.append(f"    for (int64_t i2 = 0; i2 < {last.ne[2]}; i2++)")
    lines.append(f"    for (int64_t i1 = 0; i1 < {last.ne[1]}; i1++)")
    lines.append(f"    for (int64_t i0 = 0; i0 < {last.ne[0]}; i0++) {{")
    a = first.src[0]
    lines.append(f"        float v = *(const float *)(arena + {p.offset_of(a)} + {_index_expr(a, True)});")
    for t in grp.nodes:
        fmt = FUSED_EXPR[t.op]
        b = ""
        if len(t.src) > 1 and t.src[1] is not None:
            s = t.src[1]
            b = f"(*(const float *)(arena + {p.offset_of(s)} + {_index_expr(s, True)}))"
        pr = t.params
        expr = fmt.format(b=b, m=_f(pr.get("s", 0.0)), s=_f(pr.get("b", 0.0)), lo=_f(pr.get("min", 0.0)),
                          hi=_f(pr.get("max", 0.0)))
        lines.append(f"        v = {expr};  /* {t.label()} {t.op} */")
    lines.append(f"        *(float *)(arena + {p.offset_of(last)} + {_index_expr(last, False)}) = v;")
    lines += ["    }", "}", ""]
    return lines


MAKEFILE = """\
# Build the generated program: `make` gives ./{name} (a CLI) and lib{name}.so (the C API).
CC ?= gcc
CFLAGS ?= -O2
OPENMP ?= 0
# MPI=1: with MPI, for a program of several ranks (run it with mpirun -n RANKS)
MPI ?= {mpi}
# no -ffast-math, and no contraction of a*b+c: the kernels follow ggml's rounding exactly
override CFLAGS += -std=c11 -ffp-contract=off -Ikernels -I. -D_POSIX_C_SOURCE=200809L
ifeq ($(OPENMP),1)
override CFLAGS += -fopenmp
endif
ifeq ($(MPI),1)
CC = mpicc
override CFLAGS += -DGGC_MPI
endif
SRC = program.c ggc_model.c ggc_gguf.c $(wildcard kernels/*.c)

all: {name} lib{name}.so

{name}: $(SRC) ggc_main.c
\t$(CC) $(CFLAGS) $^ -o $@ -lm

lib{name}.so: $(SRC)
\t$(CC) $(CFLAGS) -fPIC -shared $^ -o $@ -lm

clean:
\trm -f {name} lib{name}.so

.PHONY: all clean
"""

README = """\
# {name}: generated by ggc {version}

Compiled from `{source}`: graphs {graphs} ({n_nodes} nodes in {n_groups} kernel groups). Build with `make`
(C11, libc and libm; `make OPENMP=1` for threads), then:

    ./{name} MODEL.gguf -i inp_tokens=tokens.bin ... -o result_output=logits.bin
    ./{name} --list          # the inputs, outputs, state and weights, with shapes

The arena is one allocation of {arena} bytes: weights {weights}, state {state}, inputs {io},
scratch {scratch}. The C API is in `ggc_model.h`. Inputs and outputs are raw tensor bytes.
{ranks_note}"""

RANKS_NOTE = """
This program is tensor-parallel: {ranks} processes (ranks) run it, each holding its share of the
split weights. `make` builds it with mpicc (OpenMPI; Debian: openmpi-bin libopenmpi-dev); run it with

    mpirun -n {ranks} ./{name} MODEL.gguf ...   # rank 0 writes the outputs
"""


FUSABLE = frozenset(FUSED_EXPR)
C_FUSION = Fusion(elementwise=FUSABLE)  # the C target fuses elementwise chains only


def plan_program(graph: Graph | list[Graph], debug: bool, fusion: Fusion, graph_names: list[str] | None,
                 host_weight: Callable[[Plan, Tensor], bool] | None = None
                 ) -> tuple[list[Graph], list[str], list[Plan]]:
    """The graphs of one program, their names, and their plans on one shared arena, fused as the
    target's kernels allow (NO_FUSION: one kernel per node); host_weight: see plan_shared."""
    graphs = graph if isinstance(graph, list) else [graph]
    names = graph_names or [f"n{g.meta.get('n_tokens', i)}" for i, g in enumerate(graphs)]
    plans = plan_shared(graphs, reuse=not debug, fusion=fusion, host_weight=host_weight)
    for p in plans:
        check(p)
    return graphs, names, plans


def write_program_dir(out: Path, copies: list[tuple[Path, str]], texts: dict[str, str]) -> None:
    """Fill a program directory atomically: a failure leaves no half-written directory.
    copies: (source file, path inside the directory); texts: path inside -> contents."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "kernels").mkdir(parents=True)
        for src, rel in copies:
            shutil.copy(src, tmp / rel)
        for rel, text in texts.items():
            (tmp / rel).write_text(text)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def compile_c(graph: Graph | list[Graph], out: str | Path, *, name: str = "model", debug: bool = False,
              fuse: bool = True, source: str = "", graph_names: list[str] | None = None,
              reuse_existing: bool = False) -> CompiledC:
    """Write the program directory (atomically: a failure leaves no half-written directory). Several
    graphs (say prefill and decode) become one program on one arena, sharing weights and state.
    reuse_existing: the directory holds this very program already (a cache hit): plan, write nothing."""
    out = Path(out)
    graphs, names, plans = plan_program(graph, debug, C_FUSION if fuse else NO_FUSION, graph_names)
    if reuse_existing and out.is_dir():
        return CompiledC(out, plans, names)
    source = source or str(graphs[0].meta.get("model", "a .ggraph"))
    program, _ = emit_program(plans, names, source)
    ranks = program_ranks(plans)
    p = plans[0]
    rs = p.region_size
    readme = README.format(
        name=name, version=__version__, source=source, n_nodes=sum(len(g.nodes) for g in graphs),
        n_groups=sum(len(q.groups) for q in plans), arena=p.size, weights=rs["weights"], state=rs["state"],
        io=max(q.region_size["io"] for q in plans), scratch=max(q.region_size["scratch"] for q in plans),
        graphs=", ".join(names), ranks_note=RANKS_NOTE.format(ranks=ranks, name=name) if ranks > 1 else "")
    copies = [(f, f"kernels/{f.name}") for f in sorted(KERNEL_DIR.iterdir()) if f.suffix in (".c", ".h")]
    copies += [(RUNTIME_DIR / f, f) for f in RUNTIME_FILES]
    write_program_dir(out, copies, {"program.c": program, "Makefile": MAKEFILE.format(name=name, mpi=int(ranks > 1)),
                                    "README.md": readme})
    return CompiledC(out, plans, names)
