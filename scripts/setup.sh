#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: graphviz, OpenMPI (for tensor-parallel C programs), a
# virtualenv in .venv with ggc and its llama-cpp-python. llama-cpp-python compiles llama.cpp from
# source (minutes on 2 cores), so the wheel is built once and cached in $GGC_WHEEL_CACHE (default
# ~/.cache/ggc/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_VERSION=0.3.36
WHEELS="${GGC_WHEEL_CACHE:-$HOME/.cache/ggc/wheels}"

if ! command -v dot >/dev/null 2>&1; then
  echo "setup: installing graphviz" >&2
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || echo "setup: warning: graphviz not installed; 'ggc dot' will not render" >&2
  else
    echo "setup: warning: not root, graphviz not installed; 'ggc dot' will not render" >&2
  fi
fi

if ! command -v mpicc >/dev/null 2>&1 || ! command -v mpirun >/dev/null 2>&1; then
  echo "setup: installing OpenMPI" >&2
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null) \
      || echo "setup: warning: OpenMPI not installed; programs of several ranks will not build" >&2
  else
    echo "setup: warning: not root, OpenMPI not installed; programs of several ranks will not build" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "setup: building llama-cpp-python $LLAMA_VERSION from source, once (several minutes)" >&2
  mkdir -p "$WHEELS"
  # GGML_NATIVE=OFF: the wheel must not depend on this CPU's features (it is also carried to the GPU machine)
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    .venv/bin/pip wheel -q --no-deps --no-binary llama-cpp-python -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
  wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)
fi

stamp=".venv/.ggc-setup"
want="$(sha256sum pyproject.toml | cut -c1-16) $(basename "$wheel")"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check "$wheel"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
  echo "$want" > "$stamp"
fi
