#!/usr/bin/env bash
# Sourced by gpu_bundle.sh and gpu_check.sh: strict mode, the scripts folder, the repository root
# and the bundle they share (EDKM_GPU_BUNDLE_DIR, default gpu_bundle/).
# shellcheck disable=SC2034  # read by the scripts that source this one
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
bundle="${EDKM_GPU_BUNDLE_DIR:-$root/gpu_bundle}"
