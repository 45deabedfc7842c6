# Sourced by the device-side bench scripts (bench/run.sh, bench/ranks.sh): their folders and models,
# a log of all output in $OUT/$LOG, `stamp`, the carried wheels installed, and a carried kernel
# library put where ggc looks for it.
OUT=${OUT:-/tmp/out}
W=${BENCH_DIR:-/tmp/bench}
MODELS=${MODELS:-"llama3.2-1b-q4_0 llama3.2-1b-f16 llama2-7b-q4_0"}
REPS=${REPS:-3}
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/$LOG") 2>&1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
# NVLink multicast stays off on the machines of several GPUs (KINDS.md)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 GGC_CACHE=${GGC_CACHE:-$W/cache}
# a kernel library built before (carried in .bench/cuda) saves its nvcc time here
if [ -d .bench/cuda ]; then mkdir -p "$GGC_CACHE/cuda" && cp -n .bench/cuda/*.so "$GGC_CACHE/cuda/" 2>/dev/null; fi
# the device's copy of .git may lag the tree sent: pass COMMIT=$(git rev-parse --short HEAD) from here
echo "${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}" > "$W/commit.txt"
