#!/usr/bin/env bash
# Does llama.cpp's own CUDA backend give llama.cpp's CPU greedy tokens on the tiny models? The question behind
# `ggc run --check --target cuda` (bench/cuda_run_check.sh), which compares ggc's CUDA tokens with llama.cpp's CPU
# tokens and diverges on 10 of 16 models at near-ties. Same GGUFs, prompt, --ctx 512, --batch 16 and 64 tokens.
#
#   bench/llama_cuda_check.sh      (on the GPU machine, through the device tool, with carry [".whl", ".bench"])
#
#  1. for each tiny model, the prompt is tokenized as `ggc run` does and the reference tokens are computed
#     exactly as `ggc run --check` does (llama-cpp-python's CPU libllama through ggc's LlamaSession:
#     bench/llama_ref_tokens.py ref); then llama.cpp with CUDA is built from .bench/llama.cpp.tar.gz
#     (bench/llama_cpp.sh build, ~5 min for sm_90 on 16 cores; skipped when built);
#  2. bench/llama_greedy.cpp is built as a target of that llama.cpp build (tools/llama-greedy, linked as CMake
#     links llama-bench: static libllama, ggml, ggml-base, ggml-cpu, ggml-cuda and the CUDA libraries);
#  3. llama_greedy runs each model three ways, with the same context settings as LlamaSession:
#       cuda          all layers on the GPU (n_gpu_layers 99), KV cache and attention too (offload_kqv 1, the
#                     way llama.cpp runs CUDA, and the way ggc does)
#       cuda-kqv-cpu  the same, but offload_kqv 0 as LlamaSession sets it: KV cache and attention on the CPU
#       cpu           n_gpu_layers 0 and no GPU device: the static build's CPU backend (built for this CPU), a
#                     control for CPU-to-CPU differences (llama-cpp-python's wheel was built elsewhere)
#  4. one summary line per model: for each way, "all 64 equal" or the first generated token that differs from
#     the reference, with both sides' top two logits there (the reference's top-2 gap says how near the tie was).
# Everything is printed, and logged to $OUT/llama_cuda_check.log; the token lists of every run are in
# $OUT/llama_cuda_check.tgz. Env: BENCH_DIR (default /tmp/bench; the llama.cpp build in $BENCH_DIR/llama.cpp is
# shared with bench/run.sh), JOBS (parallel llama-greedy runs, default nproc/4), N, CTX, BATCH, WAYS (default "cuda cuda-kqv-cpu cpu").
set -uo pipefail
LOG=llama_cuda_check.log . bench/device_env.sh
D=$W/llama_check
LLAMA_DIR=$W/llama.cpp
N=${N:-64} CTX=${CTX:-512} BATCH=${BATCH:-16} WAYS=${WAYS:-"cuda cuda-kqv-cpu cpu"}
PROMPT="The old lighthouse keeper climbed the stairs every evening, counting each step, and looked out over the grey water for the ships that never came"
rm -rf "$D" && mkdir -p "$D"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

# 1. the references first, on an idle CPU: ggml's CPU threads wait for each other spinning, so runs that share
#    busy cores crawl (min(4, cores) threads a run, as LlamaSession; on 2 cores, the 16 llama_greedy runs took
#    65 s two at a time, 0.5 s one at a time)
P=$(( $(nproc) / 4 )); [ "$P" -ge 1 ] || P=1
python3 bench/llama_ref_tokens.py models > "$D/models.txt" || { echo "cannot make the tiny models"; exit 1; }
stamp "reference tokens (llama-cpp-python, CPU, as ggc run --check) for $(wc -l < "$D/models.txt") models"
export D N CTX BATCH PROMPT
xargs -P "$P" -L 1 sh -c 'python3 bench/llama_ref_tokens.py ref "$2" --ctx "$CTX" --batch "$BATCH" -n "$N" -p "$PROMPT" \
  --ids-out "$D/$0-$1.ids" > "$D/$0-$1.ref.txt" 2> "$D/$0-$1.ref.log" || { echo "$0 $1: reference failed:"; tail -5 "$D/$0-$1.ref.log"; }' \
  < "$D/models.txt"
stamp "building llama.cpp (CUDA)"
bench/llama_cpp.sh build "$LLAMA_DIR" || { echo "llama.cpp build failed"; exit 1; }

# 2. llama_greedy, a target of that build (CMake reconfigures itself when tools/CMakeLists.txt changes)
stamp "building llama-greedy"
mkdir -p "$LLAMA_DIR/tools/llama-greedy"
cp bench/llama_greedy.cpp "$LLAMA_DIR/tools/llama-greedy/"
cat > "$LLAMA_DIR/tools/llama-greedy/CMakeLists.txt" <<'EOF'
# added by ggc's bench/llama_cuda_check.sh
add_executable(llama-greedy llama_greedy.cpp)
target_link_libraries(llama-greedy PRIVATE llama ${CMAKE_THREAD_LIBS_INIT})
target_compile_features(llama-greedy PRIVATE cxx_std_17)
EOF
grep -q llama-greedy "$LLAMA_DIR/tools/CMakeLists.txt" || echo "add_subdirectory(llama-greedy)" >> "$LLAMA_DIR/tools/CMakeLists.txt"
cmake --build "$LLAMA_DIR/build" --target llama-greedy --verbose > "$D/greedy_build.log" 2>&1 \
  || { tail -40 "$D/greedy_build.log"; echo "llama-greedy build failed"; exit 1; }
GREEDY=$LLAMA_DIR/build/bin/llama-greedy
[ -x "$GREEDY" ] || GREEDY=$(find "$LLAMA_DIR/build" -name llama-greedy -type f -perm -u+x | head -1)
[ -x "$GREEDY" ] || { echo "no llama-greedy binary"; exit 1; }
echo "llama-greedy: $GREEDY, linked by:"
grep -- '-o bin/llama-greedy\|-o .*/llama-greedy ' "$D/greedy_build.log" | tail -1

# 3. every model every way, JOBS at a time (tiny runs: they share the GPU; not more CPU threads than cores)
stamp "llama-greedy: $WAYS"
for way in $WAYS; do
  case $way in
    cuda) args="99 $CTX $BATCH $N" opt="kqv=1" ;;
    cuda-kqv-cpu) args="99 $CTX $BATCH $N" opt="kqv=0" ;;
    cpu) args="0 $CTX $BATCH $N" opt="kqv=0" ;;
    *) echo "unknown way $way"; exit 2 ;;
  esac
  while read -r arch q path; do echo "$arch $q $path $way $args $opt"; done < "$D/models.txt"
done > "$D/jobs.txt"
export GREEDY
xargs -P "${JOBS:-$P}" -L 1 sh -c 'm=$0-$1 ids=$D/$0-$1.ids; [ -s "$ids" ] || exit 0
  "$GREEDY" "$2" "$4" "$5" "$6" "$7" "$ids" "$8" > "$D/$m.$3.txt" 2> "$D/$m.$3.log" \
    || { echo "$m $3: llama-greedy failed (rc $?):"; tail -5 "$D/$m.$3.log"; }' < "$D/jobs.txt"

# 4. what ran where, then the summary
echo "--- settings and system info: the reference, then llama-greedy per way (llama q4_0)"
grep -h '^#' "$D/llama-q4_0.ref.txt" | grep -v '^# model'
for way in $WAYS; do
  echo "[$way]"; grep -h '^#' "$D/llama-q4_0.$way.txt" 2>/dev/null | grep -v '^# model'
  grep -h -i 'offload\|using device' "$D/llama-q4_0.$way.log" 2>/dev/null | head -4
done
echo "--- first generated token (of $N) where llama.cpp's own runs differ from the reference tokens of \`ggc run --check\`"
echo "    (llama-cpp-python, CPU); ways: $WAYS"
while read -r arch q path; do
  others=()
  for way in $WAYS; do others+=("$D/$arch-$q.$way.txt"); done
  echo "$arch $q: $(python3 bench/llama_ref_tokens.py compare "$D/$arch-$q.ref.txt" "${others[@]}")"
done < "$D/models.txt" | tee "$D/summary.txt"
tar czf "$OUT/llama_cuda_check.tgz" -C "$W" llama_check
stamp "done"
