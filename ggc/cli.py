"""The `ggc` command: export, show, dot, verify, demo.

Errors in the user's input or environment print one line, `ggc: error: ...`, and exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import GgcError

DEFAULT_ARCH = "llama"


def _session_opts(a: argparse.Namespace):  # noqa: ANN202 - imported lazily
    from .capture.llama import SessionOptions

    return SessionOptions(n_ctx=a.ctx, n_batch=max(a.tokens, SessionOptions.n_batch), flash_attn=a.flash_attn == "on",
                          type_k=a.cache_type, type_v=a.cache_type)


def _default_model() -> Path:
    from .models.quantize import tiny_model

    return tiny_model(DEFAULT_ARCH, "f16")


def _model_arg(a: argparse.Namespace) -> Path:
    if a.model is None:
        from .runtime.ranks import rank_env

        p = _default_model()
        if rank_env() is None:  # the ranks of `run --ranks` were told once, by the command that started them
            print(f"ggc: using the built-in tiny {DEFAULT_ARCH} model (random weights): {p}", file=sys.stderr)
        return p
    return Path(a.model)


def _is_legacy(path: Path) -> bool:
    from .formats.legacy import MAGIC

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) == 4 and int.from_bytes(head, "little") == MAGIC


def cmd_export(a: argparse.Namespace) -> int:
    from .formats import ggraph

    src = _model_arg(a)
    if _is_legacy(src):
        from .formats.legacy import import_ggml

        graph = import_ggml(src)
    else:
        from .capture.llama import LlamaSession

        if not src.is_file():
            raise GgcError(f"{src}: no such file")
        with LlamaSession(src, _session_opts(a)) as s:
            graph, _ = s.capture(a.tokens, a.outputs)
    out = Path(a.output) if a.output else Path(src.stem + (f".t{a.tokens}" if not _is_legacy(src) else "") + ".ggraph")
    ggraph.save(graph, out)
    print(f"wrote {out}: {len(graph.tensors)} tensors, {len(graph.nodes)} nodes")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from .formats import ggraph
    from .inspect import summarize

    print(summarize(ggraph.load(a.file), top=a.top), end="")
    return 0


def cmd_dot(a: argparse.Namespace) -> int:
    from .formats import ggraph
    from .inspect import render

    graph = ggraph.load(a.file)
    out = Path(a.output or Path(a.file).with_suffix(".svg").name)
    render(graph, out, a.format)
    print(f"wrote {out}")
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    from .compiler.arena import plan
    from .compiler.report import draw, text_report
    from .formats import ggraph

    graph = ggraph.load(a.file)
    if a.kernels:
        from .backends.c.emit import C_FUSION, plan_program
        from .backends.cuda.emit import cuda_plans
        from .compiler.report import kernel_report

        plans = cuda_plans(graph)[2] if a.target == "cuda" else plan_program(graph, False, C_FUSION, None)[2]
        print(kernel_report(plans[0], a.target), end="")
        return 0
    p = plan(graph)
    ggml_alloc = None
    if not a.no_ggml:
        from .oracle.rebuild import Rebuilt

        with Rebuilt(graph, alloc=False) as rb:
            ggml_alloc = rb.ggml_alloc_size()
    print(text_report(p, ggml_alloc), end="")
    out = Path(a.png or Path(a.file).with_suffix(".plan.png").name)
    draw(p, out)
    print(f"wrote {out}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from .oracle.compare import format_table
    from .oracle.verify import verify_model

    model = _model_arg(a)
    t0 = time.perf_counter()
    evaluator = a.target
    if a.ranks > 1:
        if a.target not in ("c", "cuda"):
            raise GgcError("verify --ranks needs --target c (MPI ranks) or cuda (NCCL, one rank a GPU)")
        from .oracle.ranks import ranks_evaluator

        evaluator = ranks_evaluator(a.ranks, exact=not a.partial_sums, target=a.target)
    res = verify_model(model, a.tokens, a.outputs, _session_opts(a), target=evaluator, graph_file=a.graph)
    print(format_table(res.results, "1-rank" if a.ranks > 1 else "chained"))
    what = "decode" if a.tokens == 1 else "prefill"
    target = {"ggml": "ggml-cpu (rebuilt from the IR)"}.get(a.target, f"{a.target} (generated program, each group "
              "on the reference's inputs; 'chained' is the whole program on its own values)")
    if a.ranks > 1:
        how = "MPI ranks" if a.target == "c" else "GPUs (NCCL)"
        target = (f"{a.target} on {a.ranks} {how} (each group on its part of the reference's inputs; 'nmse' against "
                  "llama.cpp, '1-rank' against the unpartitioned program on the same inputs)")
    print(f"{model.name}: {what} N={a.tokens}, target {target}: "
          f"{'PASS' if res.ok else 'FAIL'} in {time.perf_counter() - t0:.1f}s")
    return 0 if res.ok else 1


def cmd_compile(a: argparse.Namespace) -> int:
    from .backends.c.emit import compile_c
    from .formats import ggraph

    graph = ggraph.load(a.file)
    out = Path(a.output)
    if a.ranks > 1:
        from .compiler.partition import partition, summary

        parts = partition([graph], a.ranks, exact=not a.partial_sums)
        print(f"partitioned for {a.ranks} ranks: {summary(parts)}")
        graph = parts[0].graph
    if a.target == "cuda":
        from .backends.cuda.emit import compile_cuda as compile_c  # noqa: F811 - same signature
    compiled = compile_c(graph, out, debug=a.debug, fuse=not a.no_fuse, source=Path(a.file).name)
    p = compiled.plan
    print(f"wrote {out}/: {len(p.groups)} kernel groups, arena {p.size} bytes "
          f"(scratch {p.region_size['scratch']}); build with: make -C {out}"
          + (" (nvcc; ARCH=90 for one architecture)" if a.target == "cuda" else "")
          + (f" (mpicc), run with: mpirun -n {a.ranks} {out}/model MODEL.gguf ..." if a.ranks > 1 and a.target == "c"
             else f" (NCCL), run {a.ranks} processes as {out}/README.md says" if a.ranks > 1 else ""))
    if a.ranks > 1:
        ggraph.save(graph, out / "rank.ggraph")  # what every rank runs, for inspection
    if a.build:
        from .runtime.cprogram import build

        build(compiled, target="all")
        print(f"built {out}/model and {out}/libmodel.so")
    return 0


PARTIAL_SUMS_HELP = ("with --ranks: Megatron's scheme, products split along their sums and all-reduced (fewer "
                     "collectives; equal to rounding) instead of every value exactly as on one rank")

DEFAULT_PROMPT = "Once upon a time, in a quiet village by the sea, there lived an old fisherman who"


def cmd_run(a: argparse.Namespace) -> int:
    from .llm.model import Model
    from .llm.sampling import Sampler
    from .runtime.ranks import rank_env

    builtin = a.model is None
    path = _model_arg(a)
    if a.ranks < 1:
        raise GgcError(f"--ranks must be at least 1, got {a.ranks}")
    where = rank_env() if a.ranks > 1 else None
    if builtin and where is None:
        print("ggc: the built-in model has random weights, so its text is gibberish; the speed figures are real",
              file=sys.stderr)
    if a.ranks > 1 and where is None:
        return _run_ranks(a, path)
    rank = where[0] if where else 0
    if rank:  # a rank other than 0 of a tensor-parallel run: rank 0 speaks for all
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    prompt = a.prompt if a.prompt is not None else DEFAULT_PROMPT
    sampler = Sampler(a.temp, a.top_k, a.top_p, a.seed)
    quiet = {"progress": None} if where else {}  # the command that started the ranks showed the progress
    with Model(path, target=a.target, ctx=a.ctx, batch=a.batch, threads=a.threads, ranks=a.ranks,
               partial_sums=a.partial_sums, **quiet) as m:
        st = m.stats
        if not rank:
            print(f"ggc: ready in {st.start_s:.1f}s ({'cached program' if st.cached else 'compiled now'})",
                  file=sys.stderr)
        toks: list[int] = []
        sys.stdout.write(prompt)
        sys.stdout.flush()
        pending = b""
        for tok in m.stream(prompt, a.n, sampler):
            toks.append(tok)
            pending += m.piece(tok)
            try:  # stream whole UTF-8 characters only
                sys.stdout.write(pending.decode("utf-8"))
                pending = b""
            except UnicodeDecodeError:
                pass
            sys.stdout.flush()
        sys.stdout.write(pending.decode("utf-8", errors="replace") + "\n")
        print(st.line() + (f", {a.ranks} ranks" if a.ranks > 1 else ""))
        if a.check and not rank:
            return _check(a, path, m.tokenize(prompt), toks)
    return 0


def _run_ranks(a: argparse.Namespace, path: Path) -> int:
    """Compile and build here, with progress shown, then run this same command once per rank (under
    mpirun for C, one process a GPU for CUDA: runtime/ranks.py); each process learns its rank from its
    environment and finds the program built."""
    from .llm.model import Model
    from .runtime.ranks import launch_ranks

    m = Model(path, target=a.target, ctx=a.ctx, batch=a.batch, ranks=a.ranks, load=False, partial_sums=a.partial_sums)
    m.close()
    argv = [*a.argv, "--target", m.target]  # the target it settled on (cuda falls back to c without a GPU)
    how = "with mpirun" if m.target == "c" else "one a GPU (NCCL)"
    print(f"ggc: starting {a.ranks} ranks {how}", file=sys.stderr)
    return launch_ranks(a.ranks, [sys.executable, "-m", "ggc", *argv], m.target).returncode


def _check(a: argparse.Namespace, path: Path, prompt: list[int], ours: list[int]) -> int:
    """Greedy tokens from llama.cpp itself, on the same prompt split into the same batches."""
    import numpy as np

    from .llm.reference import greedy_logits

    if a.temp > 0:
        raise GgcError("--check compares greedy decoding: drop --temp")
    ref = greedy_logits(path, prompt, len(ours), a.ctx, a.batch)
    try:
        for i, (x, logits) in enumerate(zip(ours, ref)):
            y = int(np.argmax(logits))
            if x != y:
                # how close llama.cpp's own logits are for the two picks: a near-tie is numerics, a wide
                # gap a real difference
                print(f"check: FAIL at generated token {i}: ggc {x}, llama.cpp {y} (llama.cpp's logits: "
                      f"{y} at {logits[y]:.4f}, {x} at {logits[x]:.4f}, {logits[y] - logits[x]:.4f} apart)",
                      file=sys.stderr)
                return 1
    finally:
        ref.close()
    print(f"check: all {len(ours)} generated tokens equal llama.cpp's greedy tokens")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """The main job on the built-in model: export decode and prefill, show one, plan and compile
    them to C, and verify both node by node, in ggml and as generated C."""
    from .compiler.arena import plan
    from .compiler.report import text_report
    from .formats import ggraph
    from .inspect import summarize
    from .oracle.verify import verify_model

    model = _default_model()
    print(f"built-in model: {model} (tiny {DEFAULT_ARCH}, random weights)")
    ok = True
    for n in (1, 8):
        a.tokens = n
        out = Path(a.outdir) / f"{model.stem}.t{n}.ggraph"
        out.parent.mkdir(parents=True, exist_ok=True)
        a.model = str(model)
        a.output = str(out)
        cmd_export(a)
        graph = ggraph.load(out)
        if n == 1:
            print(summarize(graph, top=5), end="")
        print(text_report(plan(graph)), end="")
        for target in ("ggml", "c"):
            t0 = time.perf_counter()
            res = verify_model(model, n, 1, _session_opts(a), target=target, graph_file=out)
            worst = max(r.nmse for r in res.results)
            print(f"verify N={n} target {target}: {sum(r.ok for r in res.results)}/{len(res.results)} nodes match "
                  f"llama.cpp (worst NMSE {worst:.2e}, {time.perf_counter() - t0:.1f}s)")
            ok &= res.ok
    return 0 if ok else 1


def _add_capture_opts(p: argparse.ArgumentParser, tokens_default: int | None) -> None:
    p.add_argument("--tokens", "-n", type=int, default=tokens_default, required=tokens_default is None,
                   help="batch size N: 1 is decode, more is prefill")
    p.add_argument("--outputs", type=int, default=1, help="tokens of the batch that produce logits (default 1)")
    p.add_argument("--ctx", type=int, default=256, help="KV cache size in cells (default 256)")
    p.add_argument("--flash-attn", choices=("on", "off"), default="on")
    p.add_argument("--cache-type", choices=("f16", "q8_0", "f32", "bf16"), default="f16", help="KV cache type")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ggc", description="ggml graph compiler")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("export", help="capture the graph llama.cpp builds for a GGUF (or import a legacy .ggml)")
    p.add_argument("model", nargs="?", help="MODEL.gguf or a legacy .ggml graph (default: built-in tiny model)")
    p.add_argument("-o", "--output", help="output .ggraph file")
    _add_capture_opts(p, 1)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("show", help="summarize a .ggraph file")
    p.add_argument("file")
    p.add_argument("--top", type=int, default=10, help="how many of the largest tensors to list")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("dot", help="draw a .ggraph file with Graphviz")
    p.add_argument("file")
    p.add_argument("-o", "--output", help="output file (.svg, .png, .pdf or .dot)")
    p.add_argument("--format", choices=("svg", "png", "pdf", "dot"))
    p.set_defaults(fn=cmd_dot)

    p = sub.add_parser("plan", help="plan the arena of a .ggraph and report it (text and PNG)")
    p.add_argument("file")
    p.add_argument("--png", help="picture of the plan (default: FILE.plan.png in the current folder)")
    p.add_argument("--no-ggml", action="store_true", help="skip the comparison with ggml-alloc")
    p.add_argument("--kernels", action="store_true",
                   help="list the kernel groups (fused ops, result, bytes read and written) instead")
    p.add_argument("--target", choices=("c", "cuda"), default="cuda", help="whose fusion rules --kernels applies")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("verify", help="check the captured graph node by node against llama.cpp")
    p.add_argument("model", nargs="?", help="MODEL.gguf (default: built-in tiny model)")
    p.add_argument("--graph", help="an exported .ggraph to check (must be the graph llama.cpp builds)")
    p.add_argument("--ranks", type=int, default=1, help="tensor-parallel ranks: MPI processes (c) or GPUs (cuda)")
    p.add_argument("--partial-sums", action="store_true", help=PARTIAL_SUMS_HELP)
    p.add_argument("--target", choices=("ggml", "c", "cuda"), default="ggml",
                   help="what computes the graph (default ggml)")
    _add_capture_opts(p, 1)
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("compile", help="compile a .ggraph into a standalone program")
    p.add_argument("file")
    p.add_argument("--target", choices=("c", "cuda"), default="c")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--debug", action="store_true", help="keep every intermediate (no memory reuse)")
    p.add_argument("--no-fuse", action="store_true", help="one kernel per node")
    p.add_argument("--build", action="store_true", help="also run make")
    p.add_argument("--ranks", type=int, default=1, help="partition tensor-parallel over R ranks (MPI: c, NCCL: cuda)")
    p.add_argument("--partial-sums", action="store_true", help=PARTIAL_SUMS_HELP)
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("run", help="generate text from a GGUF with a generated program")
    p.add_argument("model", nargs="?", help="MODEL.gguf (default: built-in tiny model)")
    p.add_argument("-p", "--prompt", help="the prompt (default: a short story opening)")
    p.add_argument("-n", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--target", default="c", help="c or cuda (cuda falls back to c where unavailable)")
    p.add_argument("--ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    p.add_argument("--batch", type=int, default=32, help="prefill batch size (default 32)")
    p.add_argument("--threads", type=int, help="threads for an OpenMP build")
    p.add_argument("--ranks", type=int, default=1, help="tensor-parallel processes: under mpirun (c), one a GPU (cuda)")
    p.add_argument("--partial-sums", action="store_true", help=PARTIAL_SUMS_HELP)
    p.add_argument("--temp", type=float, default=0.0, help="temperature; 0 is greedy (default)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int)
    p.add_argument("--check", action="store_true",
                   help="also run llama.cpp greedily and fail on the first token that differs")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="export, show, plan, compile and verify the built-in tiny model")
    p.add_argument("--outdir", default="ggc-demo", help="where the exported graphs go")
    _add_capture_opts(p, 1)
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.fn(args)
    except GgcError as e:
        print(f"ggc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ggc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
