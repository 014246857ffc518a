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
"$bin" --merge "$(IFS=,; echo "${files[*]}")" --out "$out/shard_cpu"
