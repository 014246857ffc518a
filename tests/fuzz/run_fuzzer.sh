#!/usr/bin/env bash
# Builds the safetensors fuzzer with clang (libFuzzer + AddressSanitizer + UBSan) from the
# torch-free sources, writes seed files, and fuzzes for a bounded time.
# Usage: run_fuzzer.sh PROJECT_ROOT WORK_DIR NLOHMANN_INCLUDE_DIR SECONDS [CXX]
# Exit 77 (ctest: skipped) when clang++ or its fuzzer runtime is missing.
set -euo pipefail
root=$1 work=$2 json_inc=$3 seconds=${4:-20} cxx=${5:-clang++}
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
flags=(-std=c++17 -g -O1 -fno-omit-frame-pointer -I"$root/src" -idirafter "$json_inc")
san=(-fsanitize=address,undefined -fno-sanitize-recover=undefined)
"$cxx" "${flags[@]}" "${san[@]}" -fsanitize=fuzzer "$root/tests/fuzz/fuzz_safetensors.cpp" \
  "$root/src/io/safetensors_core.cpp" -o fuzz_safetensors
"$cxx" "${flags[@]}" "${san[@]}" "$root/tests/fuzz/make_seeds.cpp" "$root/src/io/safetensors_core.cpp" -o make_seeds
./make_seeds seeds  # exits non-zero when a seed fails validation
./fuzz_safetensors -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
  -print_final_stats=1 corpus seeds
