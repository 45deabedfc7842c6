#!/usr/bin/env bash
# `ggc run --check --target cuda` on every tiny model (4 archs x 4 quants): 64 greedy tokens must
# equal llama.cpp's. The prompt (~30 tokens) is longer than the prefill batch (16), so it runs in
# chunks and then token by token; --ctx 512 makes attention read 256 cells at run time, not 512.
# BATCH sets the prefill batch (default 16); RUN_ARGS adds to each command (e.g. "--ranks 2").
# Writes one log per model and a summary to $1 (default /tmp/bench/checks).
set -uo pipefail
D=${1:-/tmp/bench/checks}
mkdir -p "$D"
PROMPT="The old lighthouse keeper climbed the stairs every evening, counting each step, and looked out over the grey water for the ships that never came"
python3 - > "$D/models.txt" <<'PY'
from ggc.models.quantize import tiny_model
from ggc.models.tiny import ARCHS
for a in ARCHS:
    for q in ("f16", "q8_0", "q4_0", "q4_k_m"):
        print(a, q, tiny_model(a, q))
PY
python3 -c "from ggc.backends.cuda.abi import build_library; build_library()"  # once, before the parallel runs
export PROMPT D BATCH RUN_ARGS
xargs -P "${JOBS:-8}" -L 1 sh -c 'python3 -m ggc run "$2" -p "$PROMPT" -n 64 --ctx 512 --batch ${BATCH:-16} --check --target cuda ${RUN_ARGS:-} \
  > "$D/$0-$1.log" 2>&1; echo "$0 $1 rc=$?: $(grep -E "^check:|tok/s" "$D/$0-$1.log" | tr "\n" " ")"' \
  < "$D/models.txt" | sort | tee "$D/summary.txt"
