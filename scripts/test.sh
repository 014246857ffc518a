#!/usr/bin/env bash
# Installs what is missing, builds edkm with its tests and runs them all (ctest).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="${EDKM_BUILD_DIR:-$here/../build}"
EDKM_BUILD_DIR="$build" bash "$here/build.sh" -DEDKM_BUILD_TESTS=ON -DEDKM_BUILD_EXAMPLES=ON -DEDKM_BUILD_BENCHMARKS=ON
cd "$build"
ctest --output-on-failure -j"${EDKM_JOBS:-$(nproc)}" "$@"
