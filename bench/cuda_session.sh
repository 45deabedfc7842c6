#!/usr/bin/env bash
# The README's CUDA session, run for real on the GPU machine (one device call, carry [".whl", ".bench"]):
# each command is echoed with "$ " and its output follows verbatim, into $OUT/session.txt.
# Then, when BENCH_1B=1, ggc's side of the bench on Llama-3.2-1B Q4_0 (decode wall and device tok/s).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/session
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD GGC_CACHE=/tmp/ggc-cache PYTHONUNBUFFERED=1
if [ -d .bench/cuda ]; then mkdir -p "$GGC_CACHE/cuda" && cp -n .bench/cuda/*.so "$GGC_CACHE/cuda/" 2>/dev/null; fi
ROOT=$PWD
ggc() { python3 -m ggc "$@"; }
run() { local s='$' a; for a in "$@"; do case $a in *" "*) s="$s \"$a\"" ;; *) s="$s $a" ;; esac; done; echo "$s"; "$@" 2>&1; echo; }
cd /tmp/session
cp "$(python3 -c "from ggc.models.quantize import tiny_model; print(tiny_model('llama', 'f16'))")" model.gguf
{
  run nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  run ggc export model.gguf --tokens 1 -o decode.ggraph
  run ggc compile decode.ggraph --target cuda -o decode-cuda --build
  run ls decode-cuda
  run ggc verify model.gguf --tokens 1 --target cuda
  run ggc run model.gguf -p "The old lighthouse keeper" -n 32 --target cuda
  run ggc run model.gguf -p "The old lighthouse keeper" -n 32 --target cuda --check
} > "$OUT/session.txt"
cat "$OUT/session.txt"
if [ "${BENCH_1B:-0}" = 1 ]; then
  cd "$ROOT"
  python3 bench/models.py llama3.2-1b-q4_0 /tmp/session/1b.gguf
  python3 bench/ggc_bench.py /tmp/session/1b.gguf --prepare > /dev/null 2>&1
  python3 bench/ggc_bench.py /tmp/session/1b.gguf --reps 3 --json "$OUT/ggc-1b.json" 2>/dev/null \
    | python3 -c "import json,sys; d=json.load(sys.stdin); print({k: round(v, 1) for k, v in d.items() if 'tok_s' in k})"
fi
