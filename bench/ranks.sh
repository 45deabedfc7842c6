#!/usr/bin/env bash
# Tensor parallelism on the GPUs of one host (nvidia-h200-x2 or larger), through the device tool
# with carry [".whl", ".bench"]:
#
#   bench/ranks.sh check    the collectives' kernel tests, then every tiny model on 2 GPUs (NCCL):
#                           `ggc verify --ranks 2 --target cuda` (decode and prefill, each node
#                           against llama.cpp and the 1-rank program) and `ggc run --check --ranks 2`;
#                           meanwhile the bench's models are written and its programs compiled
#   bench/ranks.sh bench    decode and prefill tok/s of the bench models on 1, 2, 4, ... GPUs (as many
#                           as there are), the copy bandwidth of one GPU as the ceiling, and the
#                           scaling table in $OUT/ranks.md
#
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0, here and in the generated runtime). Env: MODELS,
# REPS, JOBS (parallel checks), GPUS (the counts to measure, default 1 2 4 8 up to the GPUs there).
set -uo pipefail
LOG=ranks.log . bench/device_env.sh
nvidia-smi -L | tee "$W/gpus.txt"
nvidia-smi topo -m > "$W/topo.txt" 2>&1
N_GPU=$(nvidia-smi -L | grep -c '^GPU')
python3 -c "from ggc.backends.cuda.abi import find_nccl, build_library; print('NCCL:', find_nccl()); print(build_library())"

check() {
  local D="$W/checks2"
  mkdir -p "$D"
  python3 -c "from ggc.models.quantize import tiny_model; from ggc.models.tiny import ARCHS; \
[tiny_model(a, q) for a in ARCHS for q in ('f16', 'q8_0', 'q4_0', 'q4_k_m')]"  # once, before the parallel tests
  stamp "kernel tests of the collectives"
  python3 -m pytest -q -p no:cacheprovider tests/test_cuda_kernels_comm.py tests/test_cuda_ranks.py -k "not two_gpus" \
    2>&1 | tail -5
  stamp "verify on 2 GPUs: every tiny model, decode and prefill (pytest -n ${JOBS:-8})"
  python3 -m pytest -q -p no:cacheprovider -n "${JOBS:-8}" tests/test_cuda_ranks.py -k verify_two_gpus \
    > "$D/verify.log" 2>&1
  tail -30 "$D/verify.log"
  stamp "run --check on 2 GPUs: every tiny model, both schemes"
  RUN_ARGS="--ranks 2" bench/cuda_run_check.sh "$D/exact" > /dev/null
  RUN_ARGS="--ranks 2 --partial-sums" bench/cuda_run_check.sh "$D/sums" > /dev/null
  for s in exact sums; do sed "s/^/$s: /" "$D/$s/summary.txt"; done | tee "$D/summary.txt"
  cp "$D/summary.txt" "$OUT/run-check-2gpu.txt"
  grep -E "passed|failed" "$D/verify.log" | tail -1 > "$OUT/verify-2gpu.txt"
  grep -E "^(FAILED|ERROR)" "$D/verify.log" >> "$OUT/verify-2gpu.txt"
  tar czf "$OUT/checks2.tgz" -C "$W" checks2
}

# the configurations measured: "G" (G GPUs, every value exactly as on one) and, for G > 1, "G-sums"
# (Megatron's scheme: an all-reduce after the attention output and the FFN down projection)
configs() {
  local counts=${GPUS:-}
  if [ -z "$counts" ]; then for g in 1 2 4 8; do [ "$g" -le "$N_GPU" ] && counts="$counts $g"; done; fi
  for g in $counts; do echo "$g"; [ "$g" -gt 1 ] && echo "$g-sums"; done
}
flags() { echo "--ranks ${1%-sums}$([ "${1#*-}" = sums ] && echo " --partial-sums")"; }

prep() {  # the bench models and their programs (CPU only)
  for m in $MODELS; do
    [ -s "$W/$m.gguf" ] || { stamp "writing $m"; python3 bench/models.py "$m" "$W/$m.gguf" || exit 1; }
  done
  python3 bench/models.py --weight-bytes "$W" $MODELS
  stamp "compiling: $MODELS as $(configs | tr '\n' ' '), in parallel"
  for m in $MODELS; do for c in $(configs); do
    [ -s "$W/tp-$m-$c.prepare.json" ] || python3 bench/ggc_bench.py "$W/$m.gguf" --prepare $(flags "$c") \
      --json "$W/tp-$m-$c.prepare.json" > "$W/tp-$m-$c.prepare.log" 2>&1 &
  done; done
  wait
  stamp "compiled"
}

bench() {
  prep
  [ -s "$W/ceilings.json" ] || python3 bench/ceilings.py --json "$W/ceilings.json"
  for m in $MODELS; do for c in $(configs); do
    [ -s "$W/tp-$m-$c.json" ] && continue
    stamp "ggc: $m, $c"
    python3 bench/ggc_bench.py "$W/$m.gguf" $(flags "$c") --reps "$REPS" --json "$W/tp-$m-$c.json" \
      > "$W/tp-$m-$c.log" 2>&1 || tail -20 "$W/tp-$m-$c.log"
  done; done
  python3 bench/report.py --scaling "$W" --commit "$(cat "$W/commit.txt")" | tee "$OUT/ranks.md"
  tar czf "$OUT/ranks-files.tgz" -C "$W" $(cd "$W" && ls tp-*.json tp-*.log *.txt ceilings.json models.json 2>/dev/null)
}

case "${1:-all}" in
  check) prep > "$W/prep.log" 2>&1 & PREP=$!; check; wait $PREP; cat "$W/prep.log" ;;  # the bench's CPU work alongside
  bench) bench ;;
  all) prep > "$W/prep.log" 2>&1 & PREP=$!; check; wait $PREP; cat "$W/prep.log"; bench ;;
  *) echo "usage: $0 [check|bench|all]"; exit 2 ;;
esac
stamp "done"
