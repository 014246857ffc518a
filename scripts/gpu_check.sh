#!/usr/bin/env bash
# One-shot GPU check from the prebuilt bundle (scripts/gpu_bundle.sh): run from the repository root
# on a GPU machine (no network, no build needed), within ~8 minutes:
#
#   bash scripts/gpu_check.sh OUT_DIR
#
# Steps, each under its own timeout: the GPU tests with EDKM_REQUIRE_GPU=1 (a skipped GPU test
# fails), compute-sanitizer memcheck and racecheck on the CUDA kernel tests, the ablation on the
# full LLaMA-7B decoder layer on cuda, decode of SmolLM2- and LLaMA-7B-shaped models (random weights,
# packed and dense) on cuda, dkm_memory and utils_memory on cuda, the LLaMA example
# trained on cuda, coremltools side by side (only when importable), Nsight Compute on the LUT-GEMV
# kernels (profile/ncu_*.txt).
# OUT_DIR gets summary.md, env.txt, logs/<step>.log, tests/*.json, bench/*.{json,md,svg},
# profile/ncu_*.txt; OUT_DIR.tgz beside it packs all of them.
# Exit: 0 every step passed (or was skipped by design); 1 a step failed or ran out of time;
# 77 no usable GPU (no driver, torch sees no device, driver too old, GPU older than the kernels);
# 2 cannot run (usage, no bundle, torch missing or of another version than the bundle's).
# Environment: EDKM_GPU_BUNDLE_DIR (default gpu_bundle/), EDKM_GPU_PYTHON (default python3),
# EDKM_GPU_CHECK_BUDGET_S (whole run, default 450), EDKM_GPU_CHECK_STEPS (comma-separated subset).
# shellcheck disable=SC2317  # the step functions are called indirectly ("step_$name")
# shellcheck source=scripts/gpu_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_common.sh"  # here, root, bundle
bin="$bundle/bin"
py="${EDKM_GPU_PYTHON:-python3}"
# Order: correctness first, then the short kernel benchmarks (the figures a first run must bring
# back), then the sanitizers and the long benchmarks.
steps=(gpu_tests kernels lut_inference decode memcheck racecheck ablation dkm_memory llama_compress utils_memory peers profile)
declare -A budget=([gpu_tests]=80 [kernels]=60 [lut_inference]=70 [decode]=60 [memcheck]=50 [racecheck]=100 [ablation]=120
  [dkm_memory]=40 [llama_compress]=40 [utils_memory]=45 [peers]=60 [profile]=60)

# --- steps: each runs in its own process under `timeout`; return 77 = skipped by design ----------
gpu_filter='*Cuda*:*CUDA*:*Gpu*:*GPU*:DKMBadInput.*'   # DKMBadInput: its device-mismatch case needs a GPU
step_gpu_tests() {
  local t rc fail=0
  mkdir -p "$out/tests"
  for t in dkm_test memory_test offload_test palettizer_test nn_test model_test; do
    rc=0
    "$bin/$t" --gtest_filter="$gpu_filter" --gtest_output="json:$out/tests/$t.json" >"$out/tests/$t.log" 2>&1 || rc=$?
    echo "$t: exit $rc; $(grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ test' "$out/tests/$t.log" | tr '\n' ' ')"
    grep -E '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$out/tests/$t.log" || true   # the failed tests, once each
    [ "$rc" = 0 ] || fail=1
    # EDKM_REQUIRE_GPU=1 turns the tests' own skips into failures; any other skip is caught here.
    if grep -q '^\[  SKIPPED \]' "$out/tests/$t.log"; then echo "FAIL: $t skipped GPU tests"; fail=1; fi
    if grep -q '^\[==========\] Running 0 tests' "$out/tests/$t.log"; then echo "FAIL: $t has no GPU test"; fail=1; fi
  done
  return "$fail"
}
# The tests that launch edkm's own kernels (stream, table, assign, LUT).
# memcheck runs them all; racecheck (far slower on shared-memory kernels: the full streaming test
# did not finish in 100 s on an H200) the small streaming test that covers both partial sinks.
# shellcheck disable=SC2034  # both arrays are read through a nameref in sanitize()
kernel_tests=("dkm_test StreamingKernels.Cuda*:TableKernels.Cuda*:Palette.Cuda*" "palettizer_test PalettizedLinear.Cuda*-*ManyRowPairs*")
# shellcheck disable=SC2034
race_tests=("dkm_test StreamingKernels.CudaSmall*:TableKernels.Cuda*:Palette.Cuda*" "palettizer_test PalettizedLinear.Cuda*-*ManyRowPairs*")
sanitize() {  # TOOL TESTS (the name of a spec array) [compute-sanitizer options]; side by side unless exclusive
  local tool="$1" cs t f rc fail=0 spec names=()
  shift
  cs="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
  [ -n "$cs" ] || { echo "skipped: compute-sanitizer not found"; return 77; }
  mkdir -p "$out/sanitizer"
  local -n specs="$1"  # kernel_tests or race_tests
  shift
  for spec in "${specs[@]}"; do
    read -r t f <<<"$spec"
    names+=("$t")
    (rc=0; "$cs" --tool "$tool" --error-exitcode 99 "$@" "$bin/$t" --gtest_filter="$f" \
      >"$out/sanitizer/${tool}_$t.log" 2>&1 || rc=$?; echo "$rc" >"$out/sanitizer/${tool}_$t.rc") &
    [ "${EDKM_GPU_SHARED:-0}" = 1 ] || wait
  done
  wait
  for t in "${names[@]}"; do
    rc="$(cat "$out/sanitizer/${tool}_$t.rc" 2>/dev/null || echo 1)"
    echo "$t: exit $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|^\[  (PASSED|FAILED) +\] [0-9]' "$out/sanitizer/${tool}_$t.log" | tr '\n' ' ')"
    case "$rc" in 0) ;; 99) echo "FAIL: $tool reported errors (sanitizer/${tool}_$t.log)"; fail=1 ;; *) fail=1 ;; esac
  done
  return "$fail"
}
# Only edkm's kernels are instrumented (mangled names edkm::kernels::...): LibTorch's run at full
# speed. Without the caching allocator each tensor is its own allocation: an overrun is not hidden
# inside a pool block.
step_memcheck() { export PYTORCH_NO_CUDA_MEMORY_CACHING=1; sanitize memcheck kernel_tests --kernel-name kns=edkm; }
step_racecheck() { sanitize racecheck race_tests --kernel-name kns=edkm; }
step_ablation() {  # one process: the sharded rows need torchrun and a GPU per rank (listed as not run)
  "$bin/edkm_bench_ablation" --device cuda --out "$out/bench/ablation_cuda"
}
step_dkm_memory() {
  "$bin/edkm_bench_dkm_memory" --shapes 4096x4096,11008x4096 --bits 3 --dtype bf16 --engines dense,table,streaming \
    --device cuda --out "$out/bench/dkm_memory_cuda_engines_bf16"
}
step_llama_compress() {  # the llama_compress ctest's settings, on cuda: fails unless the reload reproduces
  "$bin/edkm_llama_compress" --device cuda --corpus "$bundle/data/GPL-3" --layers 1 --pretrain-steps 4 --steps 3 \
    --seq-len 32 --batch 2 --eval-tokens 512 --checkpoint-activations --offload --distill --offload-min-bytes 1024 \
    --optimizer adamw-bf16 --out "$out/llama_compress"
  # the written checkpoint decoded on cuda (packed, LlamaRuntime::to), without and with CUDA graphs:
  # fails unless its greedy tokens equal the decompressed model's on the CPU
  "$bin/edkm_llama_generate" --compressed "$out/llama_compress/model.edkm.safetensors" --device cuda \
    --step-graphs off --max-new-tokens 24 --check
  "$bin/edkm_llama_generate" --compressed "$out/llama_compress/model.edkm.safetensors" --device cuda \
    --max-new-tokens 24 --check
}
step_utils_memory() { "$bin/edkm_bench_utils_memory" --device cuda --repeats 1 --out "$out/bench/utils_memory_cuda"; }
step_kernels() {  # the CUDA kernels at % of the HBM bandwidth a copy probe measures (the CPU ones are measured where built)
  "$bin/edkm_bench_kernels" --device cuda --quick --out "$out/bench/kernels_cuda"
}
step_lut_inference() {  # the CUDA LUT-GEMV at LLaMA-7B shapes (and its head) against cuBLAS fp16 / bf16 / fp32
  "$bin/edkm_bench_lut_inference" --device cuda --shapes 4096x4096,11008x4096,4096x11008,32000x4096 --bits 3,4,8 \
    --min-time 0.1 --out "$out/bench/lut_inference_cuda"
  local k  # the tiled kernel's blocks per SM (default 2), on the two largest shapes
  for k in 1 4 8; do
    EDKM_LUT_CUDA_BLOCKS_PER_SM=$k "$bin/edkm_bench_lut_inference" --device cuda --shapes 11008x4096,32000x4096 \
      --bits 3,4 --min-time 0.05 --out "$out/bench/lut_inference_cuda_blocks_per_sm_$k"
  done
}
step_decode() {  # tokens/s of a step (LlamaRuntime on cuda) against HBM bandwidth / bytes read; SmolLM2 first
  # Without graphs, then with them in a second run: a graph capture that fails keeps the first's figures.
  local rc=0
  "$bin/edkm_bench_lut_inference" --device cuda --shapes '' --decode-random smollm2,llama7b --bits 3,4 \
    --decode-dense fp32,bf16 --decode-tokens 64 --min-time 0.05 --out "$out/bench/decode_cuda" || rc=$?
  "$bin/edkm_bench_lut_inference" --device cuda --shapes '' --decode-random smollm2,llama7b --bits 3,4 \
    --decode-dense fp32,bf16 --decode-graphs on --decode-tokens 64 --min-time 0.05 \
    --out "$out/bench/decode_cuda_graphs" || rc=$?
  return "$rc"
}
step_profile() {  # Nsight Compute on the LUT-GEMV kernels at a LLaMA-7B shape: bandwidth, issue, stall reasons
  local ncu k
  ncu="$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)"
  [ -n "$ncu" ] || { echo "skipped: ncu not found"; return 77; }
  mkdir -p "$out/profile"
  for k in rows rows2 tiled; do
    EDKM_LUT_CUDA_KERNEL=$k "$ncu" --kernel-name "regex:lut_gemv_${k%2}_kernel" --launch-skip 5 --launch-count 1 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
      --section Occupancy --section LaunchStats "$bin/edkm_bench_lut_inference" --device cuda --shapes 11008x4096 \
      --bits 3 --min-time 0.001 --out "$out/profile/bench_$k" >"$out/profile/ncu_$k.txt" 2>&1
    grep -E 'Memory Throughput|DRAM Throughput|Duration|Issue Slots Busy|Achieved Occupancy|Registers Per|Stall|Warp Cycles Per Issued' \
      "$out/profile/ncu_$k.txt" | head -n 30
  done
}
step_peers() {
  if ! "$py" -c 'import coremltools.optimize.torch, safetensors' >/dev/null 2>&1; then
    echo "skipped: $py cannot import coremltools.optimize.torch and safetensors (no network here to install them)"
    return 77
  fi
  "$py" "$root/benchmarks/peers/run_peers.py" --quick --device cuda --ablation "$bin/edkm_bench_ablation" \
    --chart "$bin/edkm_bench_chart" --out "$out/bench/peers_cuda"
}
if [ "${1:-}" = --run-step ]; then out="$3"; "step_$2"; exit 0; fi

# --- the run ---------------------------------------------------------------------------------------
[ $# -eq 1 ] || { sed -n '2,16p' "$0"; exit 2; }
out="$1"
mkdir -p "$out/logs" "$out/bench"
out="$(cd "$out" && pwd)"
start=$SECONDS
deadline=$((start + ${EDKM_GPU_CHECK_BUDGET_S:-450}))
device="unknown" driver="unknown" verdict="" rows=""
mf() { sed -n "s/^$1=//p" "$bundle/MANIFEST.txt" 2>/dev/null | head -n1 || true; }  # "" without a bundle
summary() {
  {
    echo "# edkm GPU check: $verdict"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), host: ${HOSTNAME:-?}, total $((SECONDS - start)) s"
    echo "- device: $device"
    echo "- driver: $driver"
    echo "- torch: ${torch_version:-?} (CUDA ${torch_cuda:-?}) from $py"
    echo "- bundle: $bundle, commit $(mf git_commit), local changes: $(mf git_local_changes)"
    echo "- bundle build: CUDA $(mf cuda_version), $(mf cuda_code), needs $(mf needs)"
    if [ -n "$rows" ]; then
      printf '\n| step | status | seconds | budget s | note |\n|---|---|---|---|---|\n%b' "$rows"
    fi
  } >"$out/summary.md"
  echo; cat "$out/summary.md"
}
no_gpu() { verdict="no usable GPU: $*"; echo "gpu_check.sh: no usable GPU: $*"; summary; exit 77; }
cannot() { verdict="cannot run: $*"; echo "gpu_check.sh: cannot run: $*" >&2; summary; exit 2; }

steps_env="${EDKM_GPU_CHECK_STEPS:-}"
for s in ${steps_env//,/ }; do
  [ -n "${budget[$s]:-}" ] || cannot "EDKM_GPU_CHECK_STEPS names an unknown step '$s' (steps: ${steps[*]})"
done

# A usable GPU: a driver (nvidia-smi), new enough for the bundle's CUDA, a device torch can use.
command -v nvidia-smi >/dev/null || no_gpu "nvidia-smi not found (no NVIDIA driver on this machine)"
smi="$(nvidia-smi 2>&1)" || no_gpu "nvidia-smi failed: $(head -n1 <<<"$smi")"
query() { nvidia-smi --query-gpu="$1" --format=csv,noheader 2>/dev/null | head -n1 || true; }
device="$(query index,name,memory.total,compute_cap)"
driver_cuda="$(grep -o 'CUDA Version: [0-9.]*' <<<"$smi" | awk '{print $3}' || true)"
driver="$(query driver_version) (supports CUDA ${driver_cuda:-?})"
echo "device: $device"; echo "driver: $driver"
need_cuda="$(mf cuda_version)"
if [ -n "$need_cuda" ] && [ -n "$driver_cuda" ] &&
  [ "$(printf '%s\n' "$need_cuda" "$driver_cuda" | sort -V | head -n1)" != "$need_cuda" ]; then
  no_gpu "the driver supports CUDA $driver_cuda; the bundle was built with CUDA $need_cuda (driver too old)"
fi
torch_info="$("$py" - 2>&1 <<'PY'
import os, warnings
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ok = torch.cuda.is_available()
print("dir=" + os.path.dirname(torch.__file__))
print("version=" + torch.__version__)
print("cuda=" + str(torch.version.cuda))
print("available=" + str(ok))
print("why=" + (" | ".join(str(w.message).replace("\n", " ") for w in caught) or "torch gave no reason"))
PY
)" || cannot "$py cannot import torch: $(tail -n1 <<<"$torch_info")"
ti() { sed -n "s/^$1=//p" <<<"$torch_info" | head -n1; }
torch_dir="$(ti dir)" torch_version="$(ti version)" torch_cuda="$(ti cuda)"
echo "torch: $torch_version (CUDA $torch_cuda) at $torch_dir"
[ "$(ti available)" = True ] || no_gpu "torch.cuda.is_available() is False under $driver: $(ti why)"
cc="$(query compute_cap | tr -d '.')"
sm="$(mf cuda_code | grep -o 'sm_[0-9]*' | sed 's/sm_//' | sort -n | head -n1 || true)"
if [[ "$sm" =~ ^[0-9]+$ && "$cc" =~ ^[0-9]+$ ]] && [ "$cc" -lt "$sm" ]; then
  no_gpu "the GPU is sm_$cc; the bundle's kernels are for sm_$sm and newer (TORCH_CUDA_ARCH_LIST at bundling)"
fi

# The bundle, and a torch of its version (LibTorch's C++ ABI changes between minor versions).
[ -s "$bundle/MANIFEST.txt" ] || cannot "no bundle at $bundle: run scripts/gpu_bundle.sh where it builds and carry gpu_bundle/"
[ "$(cut -d. -f1,2 <<<"$torch_version")" = "$(mf torch_version | cut -d. -f1,2)" ] ||
  cannot "python torch is $torch_version; the bundle was built against LibTorch $(mf torch_version)"

# Libraries: the bundle's first (SLEEF, SentencePiece, ...), then torch's and its nvidia/*/lib.
nv="$(ls -d "$torch_dir"/../nvidia/*/lib 2>/dev/null | tr '\n' ':' || true)"
export LD_LIBRARY_PATH="$bundle/lib:$torch_dir/lib:$nv${LD_LIBRARY_PATH:-}"
export EDKM_REQUIRE_GPU=1
# Every result file names this machine (benchmarks read EDKM_BENCH_MACHINE).
export EDKM_BENCH_MACHINE="${EDKM_BENCH_MACHINE:-$(query name) ($(query memory.total), driver $(query driver_version)), $(nproc) CPU cores}"
# Several processes may share the GPU unless its compute mode is exclusive (then one at a time).
EDKM_GPU_SHARED=0
[ "$(query compute_mode)" != Default ] || EDKM_GPU_SHARED=1
export EDKM_GPU_SHARED
{ echo "$smi"; echo; echo "$torch_info"; echo "glibc: $(getconf GNU_LIBC_VERSION)"; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo; cat "$bundle/MANIFEST.txt"; } >"$out/env.txt"
missing="$(for b in "$bin"/*; do ldd "$b" 2>&1 | grep 'not found' | sed "s|^|$(basename "$b"): |" || true; done | sort -u)"
if [ -n "$missing" ]; then
  verdict="FAIL: the bundle's binaries do not load here"; rows="| loader | FAIL | 0 | - | see env.txt |\n"
  echo "$missing" | tee -a "$out/env.txt"; summary; exit 1
fi

# --- the steps, each within its budget and what is left of the whole run ------------------------
selected=",${EDKM_GPU_CHECK_STEPS:-$(IFS=,; echo "${steps[*]}")},"
failed=0
for s in "${steps[@]}"; do
  [[ "$selected" == *",$s,"* ]] || continue
  b="${budget[$s]}" left=$((deadline - SECONDS - 15))
  if [ "$left" -lt 10 ]; then
    rows+="| $s | NOT RUN | 0 | $b | out of time (EDKM_GPU_CHECK_BUDGET_S) |\n"; failed=1; continue
  fi
  [ "$b" -le "$left" ] || b="$left"
  echo; echo "=== $s (budget $b s; $((SECONDS - start)) s elapsed)"
  t0=$SECONDS rc=0
  timeout -k 10 "$b" bash "$here/gpu_check.sh" --run-step "$s" "$out" >"$out/logs/$s.log" 2>&1 || rc=$?
  tail -n 8 "$out/logs/$s.log"
  note="$(grep -m1 '^skipped: ' "$out/logs/$s.log" | cut -c10- | tr '|' '/' || true)"
  case "$rc" in
    0) status=ok ;;
    77) status=skipped ;;
    124 | 137) status=TIMEOUT note="over $b s"; failed=1 ;;
    *) status=FAIL note="exit $rc, logs/$s.log"; failed=1 ;;
  esac
  echo "--- $s: $status in $((SECONDS - t0)) s"
  rows+="| $s | $status | $((SECONDS - t0)) | $b | $note |\n"
done
if [ "$failed" = 0 ]; then verdict="PASS"; else verdict="FAIL"; fi
summary
# Everything in one file beside OUT_DIR (OUT_DIR.tgz): a machine that hands back a few files only
# (the device tool: 8) gets every log and result through it.
tar czf "$out.tgz" -C "$(dirname "$out")" "$(basename "$out")" && echo "packed: $out.tgz"
exit "$failed"
