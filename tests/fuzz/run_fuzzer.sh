#!/usr/bin/env bash
# Builds a parser fuzzer (safetensors or gguf) with clang (libFuzzer + AddressSanitizer + UBSan)
# from the torch-free sources, writes seed files, and fuzzes for a bounded time.
# Usage: run_fuzzer.sh PROJECT_ROOT WORK_DIR NLOHMANN_INCLUDE_DIR SECONDS [CXX] [safetensors|gguf]
# Exit 77 (ctest: skipped) when clang++ or its fuzzer runtime is missing.
set -euo pipefail
root=$1 work=$2 json_inc=$3 seconds=${4:-20} cxx=${5:-clang++} target=${6:-safetensors}
if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "SKIP: $cxx not found (install clang to run the fuzzer)"
  exit 77
fi
mkdir -p "$work/corpus" "$work/seeds"
cd "$work"
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' > probe.cpp
if ! "$cxx" -fsanitize=fuzzer,address probe.cpp -o probe > probe.log 2>&1; then
  echo "SKIP: $cxx cannot link -fsanitize=fuzzer,address (libclang_rt.fuzzer missing?):"
  cat probe.log
  exit 77
fi
flags=(-std=c++17 -g -O1 -fno-omit-frame-pointer -I"$root/src" -I"$root/include" -I"$root/tests" -idirafter "$json_inc")
san=(-fsanitize=address,undefined -fno-sanitize-recover=undefined)
case "$target" in
  safetensors) core="$root/src/io/safetensors_core.cpp" seeder="$root/tests/fuzz/make_seeds.cpp" ;;
  gguf) core="$root/src/io/gguf_core.cpp" seeder="$root/tests/fuzz/make_gguf_seeds.cpp" ;;
  *) echo "unknown fuzz target '$target' (safetensors or gguf)"; exit 2 ;;
esac
"$cxx" "${flags[@]}" "${san[@]}" -fsanitize=fuzzer "$root/tests/fuzz/fuzz_$target.cpp" "$core" -o "fuzz_$target"
"$cxx" "${flags[@]}" "${san[@]}" "$seeder" "$core" -o make_seeds
./make_seeds seeds  # exits non-zero when a seed fails validation
"./fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
  -print_final_stats=1 corpus seeds
