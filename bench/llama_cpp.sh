#!/usr/bin/env bash
# llama.cpp's own CUDA build of llama-bench, the peer that ggc's decode speed is measured against. The source is the
# llama.cpp that the llama-cpp-python sdist vendors (the same version ggc captures graphs from).
#
#   bench/llama_cpp.sh pack        here: trim that llama.cpp to what llama-bench with CUDA needs, into
#                                  .bench/llama.cpp.tar.gz (small enough to travel with the working tree)
#   bench/llama_cpp.sh build DIR   on the GPU machine (no network): unpack into DIR and build llama-bench for sm_90;
#                                  prints the build time and the path of llama-bench. Skips if DIR has it already.
#
# Env: LLAMA_SDIST (pack: the sdist tarball), CUDA_ARCH (build: default 90), JOBS (build: default nproc),
#      GGML_CUDA (pack's configure check: ON by default; OFF also builds llama-bench for the CPU to prove the tree).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARBALL=$ROOT/.bench/llama.cpp.tar.gz
SDIST_VERSION=0.3.36
SDIST=${LLAMA_SDIST:-/tmp/sdist/llama_cpp_python-$SDIST_VERSION.tar.gz}

die() { echo "llama_cpp.sh: $*" >&2; exit 1; }

# What building llama-bench needs: ggml with its CPU and CUDA backends, libllama, common, and llama-bench itself.
# Other backends, tools, examples, tests, models, docs, gguf-py and the python converters stay behind.
KEEP=(
  CMakeLists.txt LICENSE licenses cmake include src common
  ggml/CMakeLists.txt ggml/cmake ggml/include ggml/src/ggml-cpu ggml/src/ggml-cuda
  vendor/CMakeLists.txt vendor/cpp-httplib vendor/nlohmann vendor/sheredom
  tools/CMakeLists.txt tools/llama-bench
)

# The options of both the check here and the real build. The app (unified binary), server, tests and examples would
# pull in the parts that pack drops; OpenSSL and NCCL are not needed for a single-GPU local benchmark.
CMAKE_OPTS=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_SERVER=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DGGML_CUDA_NCCL=OFF -DGGML_CCACHE=OFF
  -DLLAMA_BUILD_COMMIT="llama-cpp-python-$SDIST_VERSION"  # no git here: name the source in llama-bench's output
)

find_nvcc() {
  if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
  fi
  command -v nvcc >/dev/null || die "nvcc not found (looked in PATH and /usr/local/cuda/bin)"
  export CUDACXX=${CUDACXX:-$(command -v nvcc)}
}

pack() {
  if [ ! -f "$SDIST" ]; then
    echo "fetching the llama-cpp-python $SDIST_VERSION sdist into $(dirname "$SDIST")"
    python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$SDIST_VERSION" -d "$(dirname "$SDIST")" \
      || die "cannot download the sdist; set LLAMA_SDIST to llama_cpp_python-$SDIST_VERSION.tar.gz"
  fi
  tmp=$(mktemp -d)  # global: the EXIT trap runs after pack returns
  trap 'rm -rf "$tmp"' EXIT
  local prefix=llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp
  # The files directly in ggml/src (the ggml core) by pattern, so that new core files come along.
  tar -xzf "$SDIST" -C "$tmp" --wildcards --no-wildcards-match-slash "${KEEP[@]/#/$prefix/}" "$prefix/ggml/src/*.*" \
    || die "$SDIST lacks some of: ${KEEP[*]}"
  local src=$tmp/$prefix
  # Only the subdirectories kept above: the full lists name tools and vendored libraries that were dropped.
  cat > "$src/tools/CMakeLists.txt" <<'EOF'
# trimmed by ggc's bench/llama_cpp.sh: llama-bench only
find_package(Threads REQUIRED)
llama_add_compile_flags()
add_subdirectory(llama-bench)
EOF
  cat > "$src/vendor/CMakeLists.txt" <<'EOF'
# trimmed by ggc's bench/llama_cpp.sh: what llama-common uses
add_subdirectory(nlohmann)
add_subdirectory(sheredom)
add_subdirectory(cpp-httplib)
EOF
  mkdir -p "$(dirname "$TARBALL")"
  # Reproducible: sorted names, fixed times and owners, no gzip timestamp.
  tar -C "$src" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . | gzip -9n > "$TARBALL.tmp"
  mv "$TARBALL.tmp" "$TARBALL"
  echo "$TARBALL: $(du -h "$TARBALL" | cut -f1) ($(du -sh "$src" | cut -f1) unpacked)"

  # Prove the tree complete: configure it with CUDA (needs nvcc, not a GPU); with GGML_CUDA=OFF also build
  # llama-bench for the CPU, which compiles everything but the CUDA backend.
  local cuda=${GGML_CUDA:-ON} stub=()
  if [ "$cuda" != OFF ]; then
    find_nvcc
    # A toolkit without cuBLAS or the driver library (as here) cannot generate the build; name stand-ins, which
    # configuring and generating never open (this tree is not built with CUDA here).
    local lib target
    for lib in cublas:cublas cuda:cuda_driver; do  # library file name : FindCUDAToolkit's name for it
      target=${lib#*:} lib=${lib%:*}
      if ! { ldconfig -p 2>/dev/null | grep -q "lib$lib\.so" ||
             compgen -G "/usr/local/cuda*/lib64/lib$lib.so*" || compgen -G "/usr/local/cuda*/lib64/stubs/lib$lib.so*" ||
             compgen -G "/usr/local/cuda*/targets/*/lib/lib$lib.so*"; } >/dev/null; then
        echo "no lib$lib.so in this CUDA install: configuring with a stand-in for it"
        stub+=("-DCUDA_${target}_LIBRARY=/missing-here/lib$lib.so")
      fi
    done
  fi
  cmake -S "$src" -B "$tmp/build" -G Ninja "${CMAKE_OPTS[@]}" -DGGML_NATIVE=OFF -DGGML_CUDA="$cuda" \
    -DCMAKE_CUDA_ARCHITECTURES=90 "${stub[@]}" > "$tmp/configure.log" 2>&1 \
    || { tail -40 "$tmp/configure.log"; die "configure failed"; }
  grep -q "Including CUDA backend" "$tmp/configure.log" || [ "$cuda" = OFF ] || die "configure left CUDA out"
  echo "configure (GGML_CUDA=$cuda) ok"
  if [ "$cuda" = OFF ]; then
    local t0=$SECONDS
    cmake --build "$tmp/build" --target llama-bench -j "$(nproc)" > "$tmp/build.log" 2>&1 \
      || { tail -40 "$tmp/build.log"; die "CPU build of llama-bench failed"; }
    "$tmp/build/bin/llama-bench" --help > /dev/null || die "llama-bench --help failed"
    echo "CPU build of llama-bench ok in $((SECONDS - t0)) s"
  fi
}

build() {
  local dir=${1:?usage: bench/llama_cpp.sh build DIR}
  local bin=$dir/build/bin/llama-bench
  if [ -x "$bin" ]; then
    echo "llama-bench already built"
    echo "llama-bench: $bin"
    return
  fi
  command -v cmake >/dev/null || die "cmake not found"
  find_nvcc
  [ -f "$TARBALL" ] || die "$TARBALL missing: run 'bench/llama_cpp.sh pack' first (and carry .bench/)"
  local gen=()
  if command -v ninja >/dev/null; then gen=(-G Ninja); else echo "ninja not found: using make" >&2; fi
  mkdir -p "$dir"
  tar -xzf "$TARBALL" -C "$dir"
  local t0=$SECONDS
  # Native CPU code is fine (it runs where it is built); CUDA for the one architecture only, and the default set of
  # flash-attention kernels (FA_ALL_QUANTS off), as llama.cpp ships it.
  cmake -S "$dir" -B "$dir/build" "${gen[@]}" "${CMAKE_OPTS[@]}" -DGGML_NATIVE=ON -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" > "$dir/configure.log" 2>&1 \
    || { tail -40 "$dir/configure.log"; die "configure failed (log: $dir/configure.log)"; }
  cmake --build "$dir/build" --target llama-bench -j "${JOBS:-$(nproc)}" > "$dir/build.log" 2>&1 \
    || { tail -40 "$dir/build.log"; die "build failed (log: $dir/build.log)"; }
  [ -x "$bin" ] || die "build finished but $bin is missing"
  echo "built llama-bench in $((SECONDS - t0)) s"
  echo "llama-bench: $bin"
}

case "${1:-}" in
  pack) pack ;;
  build) shift; build "$@" ;;
  *) echo "usage: bench/llama_cpp.sh pack | build DIR" >&2; exit 2 ;;
esac
