#!/usr/bin/env bash
# GPU checks on the device machine, in one call: the CUDA kernel tests, then `ggc verify --target
# cuda` on the tiny models. The machine has no registry: the wheels this needs travel in .whl/
# (llama-cpp-python built here with GGML_NATIVE=OFF, gguf, diskcache); the rest is in its image.
# Logs go to $OUT (the device tool brings them back).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD GGC_CACHE=/tmp/ggc-cache GGC_CUDA_ARCH=${GGC_CUDA_ARCH:-sm_90} PYTHONUNBUFFERED=1
# a kernel library built before (carried in .bench/cuda) saves its nvcc time here
if [ -d .bench/cuda ]; then mkdir -p "$GGC_CACHE/cuda" && cp -n .bench/cuda/*.so "$GGC_CACHE/cuda/" 2>/dev/null; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
nvcc --version | tail -2 | tee -a "$OUT/device.txt"
if [ "${KERNEL_TESTS:-1}" = 1 ]; then
  python3 -m pytest -q --maxfail=60 -p no:cacheprovider tests/test_cuda_kernels_*.py 2>&1 | tee "$OUT/cuda_kernels.log" | tail -25
fi
for spec in ${VERIFY:-llama:f16 llama:q4_0}; do
  arch=${spec%%:*} quant=${spec##*:}
  model=$(python3 -c "from ggc.models.quantize import tiny_model; print(tiny_model('$arch', '$quant'))")
  for n in 1 8; do
    python3 -m ggc verify "$model" --tokens $n --target cuda > "$OUT/verify-$arch-$quant-$n.txt" 2>&1
    echo "verify $arch $quant N=$n rc=$?: $(tail -1 "$OUT/verify-$arch-$quant-$n.txt")"
  done
done
