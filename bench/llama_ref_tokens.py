"""The python side of bench/llama_cuda_check.sh: ggc's reference greedy tokens, and the comparison.

    python3 bench/llama_ref_tokens.py models
        the 16 tiny models of bench/cuda_run_check.sh, one "ARCH QUANT PATH" a line (made when missing)
    python3 bench/llama_ref_tokens.py ref MODEL --ctx 512 --batch 16 -n 64 -p PROMPT --ids-out IDS
        tokenizes PROMPT as `ggc run` does (llama_tokenize, BOS added, special tokens parsed) and writes the ids to
        IDS (for bench/llama_greedy); then llama.cpp's greedy tokens through llama-cpp-python (CPU), from the
        same function as `ggc run --check` (ggc.llm.reference.greedy_logits: the prompt in full chunks of
        --batch and then token by token, then each argmax fed back). Prints what llama_greedy prints:
        "INDEX TOKEN LOGIT SECOND_TOKEN SECOND_LOGIT" per generated token, after '#' lines.
    python3 bench/llama_ref_tokens.py compare REF OTHER...
        the first generated token where each OTHER (llama_greedy's output) differs from REF, with both sides'
        top two logits there
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

QUANTS = ("f16", "q8_0", "q4_0", "q4_k_m")  # bench/cuda_run_check.sh's


def cmd_models(_a: argparse.Namespace) -> int:
    from ggc.models.quantize import tiny_model
    from ggc.models.tiny import ARCHS

    for arch in ARCHS:
        for q in QUANTS:
            print(arch, q, tiny_model(arch, q))
    return 0


def top2(logits: list[float]) -> tuple[int, float, int, float]:
    import numpy as np

    x = np.asarray(logits)
    top = int(np.argmax(x))  # what _check picks: the first index of the maximum
    rest = x.copy()
    rest[top] = -np.inf
    second = int(np.argmax(rest))
    return top, float(x[top]), second, float(x[second])


def cmd_ref(a: argparse.Namespace) -> int:
    import llama_cpp.llama_cpp as ll

    from ggc.capture.llama import LlamaSession, SessionOptions
    from ggc.llm.reference import greedy_logits

    with LlamaSession(a.model, SessionOptions(n_ctx=a.ctx, n_batch=a.batch)) as s:
        prompt = s.tokenize(a.prompt)  # = ggc.llm.model.Model.tokenize: add_bos, parse_special
        o = s.opts
    Path(a.ids_out).write_text(" ".join(map(str, prompt)) + "\n")
    print(f"# model {a.model}\n# llama-cpp-python {getattr(sys.modules.get('llama_cpp'), '__version__', '?')} "
          f"(CPU) through ggc's LlamaSession: n_ctx {o.n_ctx}, n_batch = n_ubatch {o.n_batch}, n_threads "
          f"{o.n_threads}, flash_attn {o.flash_attn}, kv {o.type_k}/{o.type_v}, offload_kqv 0, "
          f"prompt {len(prompt)} tokens, n_predict {a.n}")
    print(f"# system: {ll.llama_print_system_info().decode(errors='replace')}")
    # the reference of `ggc run --check` itself (ggc/cli.py _check)
    for i, logits in enumerate(greedy_logits(a.model, prompt, a.n, a.ctx, a.batch)):
        y, ly, z, lz = top2(list(logits))
        print(f"{i} {y} {ly:.6f} {z} {lz:.6f}", flush=True)
    return 0


def read_tokens(path: str) -> tuple[list[tuple[int, int, float, int, float]], str | None]:
    """The per-token lines of a ref/llama_greedy output, and a problem with it (None when it looks complete)."""
    rows = []
    try:
        text = Path(path).read_text()
    except OSError as e:
        return [], f"no output ({e.strerror})"
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        i, t, lt, u, lu = line.split()
        rows.append((int(i), int(t), float(lt), int(u), float(lu)))
    return rows, None


def compare(ref: list, other: list, n: int) -> str:
    for (i, y, ly, z, lz), (j, x, lx, w, lw) in zip(ref, other):
        if i != j:
            return f"out of step at line {i} (token index {j}): not an output of this tool"
        if x != y:
            return (f"differs at {i}: {x} (its logits: {x} {lx:.4f}, {w} {lw:.4f}, {lx - lw:.4f} apart); "
                    f"ref {y} (ref logits: {y} {ly:.4f}, {z} {lz:.4f}, top-2 gap {ly - lz:.4f})")
    if len(other) < n:
        return f"equal for its {len(other)} tokens, but it stopped early (of {n})"
    return f"all {n} equal"


def cmd_compare(a: argparse.Namespace) -> int:
    ref, err = read_tokens(a.ref)
    if err or not ref:
        print(f"ref: {err or 'no tokens'}")
        return 1
    parts = []
    for path in a.other:
        other, err = read_tokens(path)
        name = Path(path).stem.split(".")[-1]
        parts.append(f"{name}: {err or compare(ref, other, len(ref))}")
    print(" | ".join(parts))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("models").set_defaults(fn=cmd_models)
    r = sub.add_parser("ref")
    r.add_argument("model")
    r.add_argument("--ctx", type=int, default=512)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("-n", type=int, default=64)
    r.add_argument("-p", "--prompt", required=True)
    r.add_argument("--ids-out", required=True)
    r.set_defaults(fn=cmd_ref)
    c = sub.add_parser("compare")
    c.add_argument("ref")
    c.add_argument("other", nargs="+")
    c.set_defaults(fn=cmd_compare)
    a = p.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
