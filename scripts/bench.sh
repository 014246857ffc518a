#!/usr/bin/env bash
# Builds the benchmarks and runs them all, writing JSON + Markdown + SVG per benchmark.
#
#   bash scripts/bench.sh            # full shapes   -> benchmarks/results/ (older benchmarks: results/suite/)
#   bash scripts/bench.sh --quick    # shapes / 8    -> benchmarks/results/quick/ (under 5 minutes on 2 cores)
#
# Runs: the eDKM ablation (edkm_bench_ablation), the kernel benchmarks (edkm_bench_kernels), edkm vs
# coremltools (benchmarks/peers/run_peers.py; skipped when coremltools cannot be imported), and the
# older dkm_memory / offload_memory / utils_memory benchmarks (charts drawn from their JSON by
# edkm_bench_chart). With a CUDA build and a GPU, the ablation and dkm_memory also run on cuda.
# Environment: EDKM_BENCH_MACHINE names the machine in the results (default: this project's CI box,
# "2-core x86-64 CPU, 24 GiB, no GPU"); OMP_NUM_THREADS (default 1: comparable, single-threaded
# figures; spinning OpenMP workers on a busy 2-core machine make steps several times slower); the
# build knobs of scripts/build.sh (EDKM_BUILD_DIR, EDKM_JOBS, ...). Full shapes need ~17 GB of free
# memory (dense DKM on 11008x4096 at 3 bits) and take about 40 minutes on 2 cores (estimate).
# The ablation runs under torchrun (found next to EDKM_PYTHON or on PATH) for its sharded rows
# (+sharding, eDKM combined): 4 ranks with --quick; 2 ranks at full shapes, on the 4096x4096
# matrices only (EDKM_ABLATION_MATRICES overrides): rank 0 runs dense alone, and 11008x4096 dense
# needs ~17 GB a process, more than two ranks of it fit in 24 GiB. Without torchrun it runs in one
# process and lists the sharded rows as "needs torchrun".
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
quick=0
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $a (use --quick)" >&2; exit 2 ;;
  esac
done
build="${EDKM_BUILD_DIR:-$root/build}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
EDKM_BUILD_DIR="$build" EDKM_TARGET=edkm_bench_chart bash "$here/build.sh" -DEDKM_BUILD_BENCHMARKS=ON
source "$here/env.sh"
edkm_torch >/dev/null  # sets EDKM_PYTHON (build.sh installed whatever was missing)
targets=(edkm_bench_ablation edkm_bench_dkm_memory edkm_bench_offload_memory edkm_bench_utils_memory)
grep -q 'edkm_bench_kernels' "$build/build.ninja" && targets+=(edkm_bench_kernels)
cmake --build "$build" -j"${EDKM_JOBS:-$(nproc)}" --target "${targets[@]}"
b="$build/benchmarks"

if [ "$quick" = 1 ]; then
  out="$root/benchmarks/results/quick" older="$out" q=(--quick)
else
  out="$root/benchmarks/results" older="$root/benchmarks/results/suite" q=()
fi
mkdir -p "$out" "$older"
gpu=0
if grep -q 'EDKM_WITH_CUDA' "$build/CMakeCache.txt" 2>/dev/null && command -v nvidia-smi >/dev/null &&
  nvidia-smi -L >/dev/null 2>&1; then gpu=1; fi
chart() { "$b/edkm_bench_chart" "$@"; }
start=$SECONDS
echo "bench.sh: OMP_NUM_THREADS=$OMP_NUM_THREADS, load: $(cut -d' ' -f1-3 /proc/loadavg)"
step() { echo; echo "=== $* ($((SECONDS - start)) s so far)"; }

step "ablation: LLaMA-7B decoder layer, 3 bits, bf16"
torchrun="$(dirname "$EDKM_PYTHON")/torchrun"
[ -x "$torchrun" ] || torchrun="$(command -v torchrun || true)"
if [ "$quick" = 1 ]; then ranks=4 abl=(); else ranks=2 abl=(--no-warmup --matrices "${EDKM_ABLATION_MATRICES:-q_proj,k_proj,v_proj,o_proj}"); fi
if [ -n "$torchrun" ]; then
  "$torchrun" --standalone --no-python --nproc-per-node "$ranks" \
    "$b/edkm_bench_ablation" "${q[@]}" "${abl[@]}" --device cpu --out "$out/ablation_cpu"
else
  echo "bench.sh: torchrun not found: the ablation's sharded rows are not measured"
  "$b/edkm_bench_ablation" "${q[@]}" "${abl[@]}" --device cpu --out "$out/ablation_cpu"
fi
[ "$gpu" = 1 ] && "$b/edkm_bench_ablation" "${q[@]}" --device cuda --out "$out/ablation_cuda"

if [ -x "$b/edkm_bench_kernels" ]; then
  step "kernels (Google Benchmark)"
  "$b/edkm_bench_kernels" "${q[@]}" --out "$out/kernels_cpu"
fi

step "peers: coremltools DKMPalettizer"
if "$EDKM_PYTHON" -c "import coremltools.optimize.torch, safetensors" >/dev/null 2>&1; then
  "$EDKM_PYTHON" "$root/benchmarks/peers/run_peers.py" "${q[@]}" --ablation "$b/edkm_bench_ablation" \
    --chart "$b/edkm_bench_chart" --out "$out/peers_cpu"
  [ "$gpu" = 1 ] && "$EDKM_PYTHON" "$root/benchmarks/peers/run_peers.py" "${q[@]}" --device cuda \
    --ablation "$b/edkm_bench_ablation" --chart "$b/edkm_bench_chart" --out "$out/peers_cuda"
else
  echo "skipped: coremltools / safetensors not importable by $EDKM_PYTHON"
fi

step "dkm_memory: engines"
if [ "$quick" = 1 ]; then shapes=512x512,1376x512; else shapes=4096x4096,11008x4096; fi
devices=(cpu)
[ "$gpu" = 1 ] && devices+=(cuda)
for d in "${devices[@]}"; do
  f="$older/dkm_memory_${d}_engines_bf16"
  "$b/edkm_bench_dkm_memory" --shapes "$shapes" --bits 3 --dtype bf16 --engines dense,table,streaming \
    --device "$d" --out "$f"
  chart --json "$f.json" --category shape --series engine --value peak_bytes --log --y-label "peak bytes" \
    --title "DKM forward+backward peak memory per engine (3 bits, bf16, $d)" --out "$f.svg"
done

step "offload_memory"
if [ "$quick" = 1 ]; then shapes=256x1024,1024x1024; else shapes=1024x4096,4096x4096; fi
"$b/edkm_bench_offload_memory" --shapes "$shapes" --bits 3 --device cpu --out "$older/offload_cpu"
chart --json "$older/offload_cpu.json" --category shape --series offload --value step_seconds \
  --y-label "fwd+bwd s" --title "Dense DKM without (false) and with (true) the offloader: step time" \
  --out "$older/offload_cpu.svg"

step "utils_memory"
"$b/edkm_bench_utils_memory" --device cpu --threads 1 --repeats "$([ "$quick" = 1 ] && echo 1 || echo 3)" \
  "${q[@]}" --out "$older/utils_memory_cpu"
chart --json "$older/utils_memory_cpu.json" --category utility --value plain_peak_bytes,edkm_peak_bytes --log \
  --y-label "peak bytes" --title "Memory-saving utilities vs their plain equivalents: peak" \
  --out "$older/utils_memory_cpu.svg"

step "done in $((SECONDS - start)) s; results in $out"
