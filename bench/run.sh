#!/usr/bin/env bash
# The benchmark, in one device call: ggc against llama.cpp's CUDA backend on the same GGUF files.
#
#   bench/run.sh            (on the GPU machine, through the device tool, with carry [".whl", ".bench"])
#
# Stages (each skipped when its output is already in $BENCH_DIR, so a warm machine can resume):
#  1. llama.cpp with CUDA is built from the trimmed llama-cpp-python sdist (.bench/llama.cpp.tar.gz,
#     made here by `bench/llama_cpp.sh pack`), in the background on all cores;
#  2. meanwhile: the random-weight GGUFs with real shapes (bench/models.py), ggc's programs for
#     them (capture, compile, nvcc: bench/ggc_bench.py --prepare), GPU correctness checks;
#  3. once the CPU is idle: the ceilings (copy bandwidth, bf16 matrix rate), then each engine
#     timed on each model, one at a time, peak GPU memory polled alike for both;
#  4. bench/report.py writes the table to $OUT/bench.md.
# Env: MODELS (names for bench/models.py), CHECKS=0 skips the GPU correctness checks, REPS.
set -uo pipefail
LOG=run.log . bench/device_env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$W/device.txt"

# 1. the peer, in the background
LLAMA_DIR=$W/llama.cpp
( s=$(date +%s); bench/llama_cpp.sh build "$LLAMA_DIR" > "$W/llama_build.log" 2>&1; rc=$?
  echo "$(( $(date +%s) - s )) s (rc $rc), sm_90 only, $(nproc) cores" > "$W/llama_build_time.txt" ) &
BUILD=$!

# 2. models, ggc programs, checks
python3 -c "from ggc.backends.cuda.abi import build_library; print(build_library())"
if [ "${KERNEL_BENCH:-1}" = 1 ] && [ ! -s "$W/kernels.json" ]; then
  stamp "single kernels: matrix products (the staged kernel first, for comparison)"
  GGC_CUDA_STAGED_MMV=1 python3 bench/kernel_bench.py --json "$W/kernels-staged.json" > "$W/kernels-staged.log" 2>&1
  python3 bench/kernel_bench.py --json "$W/kernels.json" 2>&1 | tee "$W/kernels.log"
  echo "staged:"; cat "$W/kernels-staged.log"
fi
if [ -n "${CUDA_TESTS:-}" ] && [ ! -s "$W/cuda_tests.log" ]; then
  stamp "CUDA kernel tests: $CUDA_TESTS"
  python3 -m pytest -q -p no:cacheprovider $CUDA_TESTS > "$W/cuda_tests.log" 2>&1
  tail -15 "$W/cuda_tests.log"
fi
for m in $MODELS; do
  [ -s "$W/$m.gguf" ] || { stamp "writing $m"; python3 bench/models.py "$m" "$W/$m.gguf" || exit 1; }
done
python3 bench/models.py --weight-bytes "$W" $MODELS
for m in $MODELS; do
  [ -s "$W/ggc-$m.prepare.json" ] || { stamp "ggc: compiling $m";
    python3 bench/ggc_bench.py "$W/$m.gguf" --prepare --json "$W/ggc-$m.prepare.json" > "$W/ggc-$m.prepare.log" 2>&1 \
      || { tail -20 "$W/ggc-$m.prepare.log"; }; }
done
if [ "${CHECKS:-1}" = 1 ] && [ ! -s "$W/checks/summary.txt" ]; then
  stamp "GPU checks: ggc run --check --target cuda on the tiny models"
  bench/cuda_run_check.sh "$W/checks"
fi
stamp "waiting for the llama.cpp build"
wait $BUILD
cat "$W/llama_build_time.txt"
BENCH=$(find "$LLAMA_DIR" -name llama-bench -type f -perm -u+x | head -1)
[ -n "$BENCH" ] || { tail -30 "$W/llama_build.log"; echo "no llama-bench"; }

# 3. timings, one engine at a time on an idle CPU
[ -s "$W/ceilings.json" ] || python3 bench/ceilings.py --json "$W/ceilings.json"
for m in $MODELS; do
  stamp "ggc: $m"
  python3 bench/peak_mem.py "$W/ggc-$m.mem.json" -- python3 bench/ggc_bench.py "$W/$m.gguf" --reps "$REPS" \
    --json "$W/ggc-$m.json" > "$W/ggc-$m.log" 2>&1 || tail -20 "$W/ggc-$m.log"
  if [ -n "$BENCH" ]; then
    stamp "llama.cpp: $m"
    common=(-m "$W/$m.gguf" -ngl 99 -fa 1 -r $((REPS + 2)) -o json)
    "$BENCH" "${common[@]}" -p 512 -n 0 > "$W/llama-$m-pp.json" 2> "$W/llama-$m-pp.log" || tail -5 "$W/llama-$m-pp.log"
    python3 bench/peak_mem.py "$W/llama-$m-tg.mem.json" -- "$BENCH" "${common[@]}" -p 0 -n 128 -d 512 \
      > "$W/llama-$m-tg.json" 2> "$W/llama-$m-tg.log" || tail -5 "$W/llama-$m-tg.log"
    "$BENCH" "${common[@]}" -p 0 -n 128 > "$W/llama-$m-tg0.json" 2>/dev/null
  fi
done

# 4. the table, and everything it was made from
python3 bench/report.py "$W" --commit "$(cat "$W/commit.txt")" | tee "$OUT/bench.md"
cp "$W/checks/summary.txt" "$OUT/checks.txt" 2>/dev/null
tar czf "$OUT/bench-files.tgz" -C "$W" $(cd "$W" && ls *.json *.txt *.log 2>/dev/null) checks
stamp "done"
