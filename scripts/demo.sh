#!/usr/bin/env bash
# Installs what is missing, builds edkm and runs the compression demo (tiny preset by default).
# Arguments are passed to the demo, e.g.: scripts/demo.sh --preset small --bits 4
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EDKM_TARGET=edkm_compress EDKM_BUILD_DIR="${EDKM_BUILD_DIR:-$here/../build}" bash "$here/build.sh" -DEDKM_BUILD_EXAMPLES=ON
exec "${EDKM_BUILD_DIR:-$here/../build}/examples/edkm_compress" "$@"
