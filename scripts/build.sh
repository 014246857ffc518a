#!/usr/bin/env bash
# Configures and builds edkm into ${EDKM_BUILD_DIR:-build}; extra args go to cmake's configure step.
# EDKM_TARGET builds one target only. Shared libraries unless EDKM_SHARED_LIBS=OFF.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
edkm_ensure_all
root="$(cd "$here/.." && pwd)"
build="${EDKM_BUILD_DIR:-$root/build}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
# Paths relative to the source tree in ccache keys: fresh clones and worktrees share hits.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
mkdir -p "$build"
# Configure output goes to a log (LibTorch's config prints harmless warnings); shown on failure.
if ! cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE="${EDKM_BUILD_TYPE:-Release}" \
  -DCMAKE_PREFIX_PATH="$EDKM_TORCH_PREFIX" \
  -DEDKM_PYTHON="$EDKM_PYTHON" -DBUILD_SHARED_LIBS="${EDKM_SHARED_LIBS:-ON}" "$@" >"$build/configure.log" 2>&1; then
  cat "$build/configure.log" >&2
  exit 1
fi
cmake --build "$build" -j"${EDKM_JOBS:-$(nproc)}" ${EDKM_TARGET:+--target "$EDKM_TARGET"}
