#!/usr/bin/env bash
# Per-rank memory and time of sharded DKM with 1, 2 and 4 ranks (torchrun, Gloo over loopback),
# merged into benchmarks/results/shard_cpu.md + .json.
#   bash benchmarks/run_shard.sh [BUILD_DIR] [extra options of edkm_bench_shard_memory]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"; shift || true
bin="$build/benchmarks/edkm_bench_shard_memory"
torchrun="${EDKM_TORCHRUN:-$(command -v torchrun || echo "${EDKM_CACHE_DIR:-$HOME/.cache/edkm}/venv/bin/torchrun")}"
out="$root/benchmarks/results"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
files=()
for n in 1 2 4; do
  OMP_NUM_THREADS=1 "$torchrun" --standalone --no-python --nproc-per-node "$n" "$bin" --out "$tmp/shard_w$n" "$@" \
    > "$tmp/log_$n" 2>&1 || { cat "$tmp/log_$n"; exit 1; }
  files+=("$tmp/shard_w$n.json")
done
"$bin" --merge "$(IFS=,; echo "${files[*]}")" --out "$tmp/shard_cpu" > /dev/null
cp "$tmp/shard_cpu.json" "$out/shard_cpu.json"
{
  echo "# Sharded DKM per rank: dense + ShardedOffloader, sharded table / streaming engines (CPU, Gloo)"
  echo
  echo "Machine: ${EDKM_MACHINE:-2-core x86-64 CPU, 24 GiB, no GPU}, shared with other builds. LibTorch 2.11.0, Release,"
  echo "\`OMP_NUM_THREADS=1\`, ranks = processes on this one machine (torchrun --standalone, Gloo over loopback)."
  echo
  echo "Command: \`bash benchmarks/run_shard.sh ${build#$root/} $*\`"
  echo "(per rank count: \`torchrun --standalone --no-python --nproc-per-node N edkm_bench_shard_memory\`)."
  echo "Options: \`DKMOptions(3).epsilon(0)\` (all 3 iterations); one timed step per run (no warm-up); every figure"
  echo "is the largest over the ranks. CPU peak: MemoryMeter (LibTorch's CPU allocator, the \"device\" role on CPU);"
  echo "host pool: the ShardedOffloader's HostMemoryPool (the \"host\" role; not counted by MemoryMeter)."
  echo
  cat "$tmp/shard_cpu.md"
} > "$out/shard_cpu.md"
cat "$out/shard_cpu.md"
