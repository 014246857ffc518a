#!/usr/bin/env bash
# Installs what is missing, builds edkm and runs the LLaMA compression demo (examples/llama_compress:
# the tiny preset trained on the `fortunes` corpus, then fp32 / 3-bit RTN / 3-bit k-means / 3-bit DKM
# compared on held-out text). Arguments are passed to it, e.g.: scripts/demo.sh --steps 200 --bits 4
# The earlier MLP demo is still built as build/examples/edkm_compress.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
EDKM_TARGET=edkm_llama_compress EDKM_BUILD_DIR="${EDKM_BUILD_DIR:-$here/../build}" bash "$here/build.sh" -DEDKM_BUILD_EXAMPLES=ON
exec "${EDKM_BUILD_DIR:-$here/../build}/examples/edkm_llama_compress" "$@"
