#!/usr/bin/env bash
# Per-kernel device time of one decode step, ggc against llama.cpp, with Nsight Compute (one device call).
#
#   bench/profile.sh     (on the GPU machine, carry [".whl", ".bench"]; writes $OUT/profile.md)
#
# ncu times every kernel on its own (--clock-control none: the clocks as the bench sees them), so the sums
# leave out the gaps between kernels; they say which kernels cost what, not the step's wall time.
# Env: MODELS (bench/models.py names), LLAMA=0 skips llama.cpp (no build), PREFILL=1 profiles ggc's prefill too,
# DETAIL=REGEX writes every ncu section of the first DETAIL_COUNT (8) kernels whose names match.
set -uo pipefail
OUT=${OUT:-/tmp/out}
W=${BENCH_DIR:-/tmp/bench}
MODELS=${MODELS:-"llama2-7b-q4_0 llama3.2-1b-q4_0"}
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/profile.log") 2>&1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
NCU_ARGS=(--clock-control none --metrics gpu__time_duration.sum --csv --page raw)

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 GGC_CACHE=${GGC_CACHE:-$W/cache}
if [ -d .bench/cuda ]; then mkdir -p "$GGC_CACHE/cuda" && cp -n .bench/cuda/*.so "$GGC_CACHE/cuda/" 2>/dev/null; fi
LLAMA_DIR=$W/llama.cpp
if [ "${LLAMA:-1}" = 1 ]; then
  ( bench/llama_cpp.sh build "$LLAMA_DIR" > "$W/llama_build.log" 2>&1 ) &
  BUILD=$!
fi
python3 -c "from ggc.backends.cuda.abi import build_library; print(build_library())"
: > "$OUT/profile.md"
for m in $MODELS; do
  [ -s "$W/$m.gguf" ] || { stamp "writing $m"; python3 bench/models.py "$m" "$W/$m.gguf" || exit 1; }
  stamp "ggc: compiling $m"
  python3 bench/ggc_bench.py "$W/$m.gguf" --prepare > "$W/ggc-$m.prepare.log" 2>&1 || tail -20 "$W/ggc-$m.prepare.log"
  stamp "ncu: ggc $m"
  pf=(); [ "${PREFILL:-0}" = 1 ] && pf=(--prefill)
  "$NCU" "${NCU_ARGS[@]}" --profile-from-start off --log-file "$W/ncu-ggc-$m.csv" \
    python3 bench/ncu_step.py "$W/$m.gguf" "${pf[@]}" > "$W/ncu-ggc-$m.log" 2>&1 || tail -20 "$W/ncu-ggc-$m.log"
  python3 bench/ncu_table.py "$W/ncu-ggc-$m.csv" --title "ggc $m, decode step at depth 512${pf:+ (and one prefill)}" \
    >> "$OUT/profile.md"
  echo >> "$OUT/profile.md"
  if [ -n "${DETAIL:-}" ]; then  # every section ncu has, for the first DETAIL_COUNT kernels matching DETAIL
    stamp "ncu details: ggc $m, kernels matching $DETAIL"
    "$NCU" --clock-control none --set full --kernel-name "regex:$DETAIL" --launch-count "${DETAIL_COUNT:-8}" \
      --profile-from-start off --page details python3 bench/ncu_step.py "$W/$m.gguf" > "$OUT/ncu-detail-$m.txt" 2>&1
  fi
done
if [ "${LLAMA:-1}" = 1 ]; then
  stamp "waiting for the llama.cpp build"; wait $BUILD
  BENCH=$(find "$LLAMA_DIR" -name llama-bench -type f -perm -u+x | head -1)
  [ -n "$BENCH" ] || { tail -30 "$W/llama_build.log"; exit 1; }
  for m in $MODELS; do
    stamp "ncu: llama.cpp $m (warm-up token + 8 decode tokens at depth 0)"
    "$NCU" "${NCU_ARGS[@]}" --log-file "$W/ncu-llama-$m.csv" \
      "$BENCH" -m "$W/$m.gguf" -ngl 99 -fa 1 -p 0 -n 8 -r 1 > "$W/ncu-llama-$m.log" 2>&1 || tail -20 "$W/ncu-llama-$m.log"
    python3 bench/ncu_table.py "$W/ncu-llama-$m.csv" --steps 9 --title "llama.cpp $m, per decode token (9 tokens)" \
      >> "$OUT/profile.md"
    echo >> "$OUT/profile.md"
  done
fi
cat "$OUT/profile.md"
tar czf "$OUT/profile-files.tgz" -C "$W" $(cd "$W" && ls ncu-*.csv *.log 2>/dev/null)
stamp "done"
