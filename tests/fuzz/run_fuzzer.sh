#!/usr/bin/env bash
# Builds a fuzzer with clang (libFuzzer + AddressSanitizer + UBSan), writes seed files, and fuzzes
# for a bounded time: the safetensors or GGUF parser (torch-free sources), or the byte-level BPE
# tokenizer built from a hostile vocabulary (bpe: its sources, c10 for TORCH_CHECK, PCRE2).
# Usage: run_fuzzer.sh PROJECT_ROOT WORK_DIR NLOHMANN_INCLUDE_DIR SECONDS [CXX] [safetensors|gguf]
#        run_fuzzer.sh PROJECT_ROOT WORK_DIR NLOHMANN_INCLUDE_DIR SECONDS CXX bpe TORCH_INCLUDE C10_LIB
#                      PCRE2_INCLUDE PCRE2_LIB
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
extra=() core=()
case "$target" in
  safetensors) core=("$root/src/io/safetensors_core.cpp") seeder="$root/tests/fuzz/make_seeds.cpp" ;;
  gguf) core=("$root/src/io/gguf_core.cpp") seeder="$root/tests/fuzz/make_gguf_seeds.cpp" ;;
  bpe)
    torch_inc=${7:?TORCH_INCLUDE} c10_lib=${8:?C10_LIB} pcre2_inc=${9:?PCRE2_INCLUDE} pcre2_lib=${10:?PCRE2_LIB}
    if [ ! -f "$pcre2_inc/pcre2.h" ] || [ ! -f "$pcre2_lib" ]; then
      echo "SKIP: PCRE2 not found (the BPE tokenizer needs it)"
      exit 77
    fi
    core=("$root/src/models/bpe_tokenizer.cpp" "$root/src/models/bpe_tokenizer_json.cpp" "$root/src/io/file_io.cpp"
          "$root/src/io/safetensors_core.cpp")
    flags+=(-DEDKM_WITH_PCRE2=1 -idirafter "$torch_inc" -idirafter "$pcre2_inc")
    extra=("$c10_lib" "$pcre2_lib" "-Wl,-rpath,$(dirname "$c10_lib")")
    seeder="$root/tests/fuzz/make_bpe_seeds.cpp" ;;
  *) echo "unknown fuzz target '$target' (safetensors, gguf or bpe)"; exit 2 ;;
esac
"$cxx" "${flags[@]}" "${san[@]}" -fsanitize=fuzzer "$root/tests/fuzz/fuzz_$target.cpp" "${core[@]}" "${extra[@]}" \
  -o "fuzz_$target"
if [ "$target" = bpe ]; then
  "$cxx" -std=c++17 -O1 "$seeder" -o make_seeds
else
  "$cxx" "${flags[@]}" "${san[@]}" "$seeder" "${core[@]}" -o make_seeds
fi
./make_seeds seeds  # exits non-zero when a seed fails validation
"./fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
  -print_final_stats=1 corpus seeds
