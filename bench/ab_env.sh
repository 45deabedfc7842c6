#!/usr/bin/env bash
# An A/B of kernel switches in one device call (carry [".whl", ".bench"]): each model's program is
# built once, then its decode and prefill are timed (bench/ggc_bench.py) under each environment in
# turn, the environments alternating, REPEATS rounds, so that drift hits every variant alike.
#
#   VALUES="base GGC_PDL_PREFETCH=0 GGC_PDL=0,GGC_GEMV1_NT=128" MODELS="llama3.2-1b-q4_0" bash bench/ab_env.sh
#
# Env: VALUES (space-separated variants; a variant is base or NAME=V[,NAME=V...]), MODELS (names for
# bench/models.py), REPEATS (rounds, default 2), REPS (ggc_bench repetitions a run, default 2),
# TESTS (pytest arguments run first, e.g. a kernel test file), ARGS (more ggc_bench arguments, e.g.
# --prompt 256). Writes $OUT/ab.md, the table.
set -uo pipefail
LOG=ab.log . bench/device_env.sh
python3 -c "from ggc.backends.cuda.abi import build_library; print(build_library())" || exit 1
if [ -n "${TESTS:-}" ]; then
  stamp "tests: $TESTS"
  python3 -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tail -25
fi
for m in $MODELS; do
  [ -s "$W/$m.gguf" ] || { stamp "writing $m"; python3 bench/models.py "$m" "$W/$m.gguf" || exit 1; }
  stamp "compiling $m"
  python3 bench/ggc_bench.py "$W/$m.gguf" --prepare ${ARGS:-} > "$W/$m.prepare.log" 2>&1 || { tail -20 "$W/$m.prepare.log"; exit 1; }
done
echo "| model | variant | round | decode tok/s (wall) | decode tok/s (device) | prefill tok/s (wall) |" > "$OUT/ab.md"
echo "| --- | --- | --- | --- | --- | --- |" >> "$OUT/ab.md"
for round in $(seq "${REPEATS:-2}"); do
  for m in $MODELS; do
    for v in ${VALUES:-base}; do
      vars=()
      [ "$v" = base ] || IFS=, read -r -a vars <<< "$v"
      if env "${vars[@]}" python3 bench/ggc_bench.py "$W/$m.gguf" --reps "${REPS:-2}" ${ARGS:-} --json "$W/ab.json" > "$W/ab-run.log" 2>&1; then
        python3 - "$W/ab.json" "$m" "$v" "$round" >> "$OUT/ab.md" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {r['tg_tok_s']:,.0f} | {r['tg_device_tok_s']:,.0f} | {r['pp_tok_s']:,.0f} |")
EOF
        stamp "$(tail -1 "$OUT/ab.md")"
      else
        tail -20 "$W/ab-run.log"
      fi
    done
  done
done
cat "$OUT/ab.md"
