#!/usr/bin/env bash
# Builds edkm with its CUDA kernels for sm_90 (H100 / H200) and gathers what a one-shot GPU check
# needs into gpu_bundle/ (git-ignored), so that a GPU machine without network or Debian dev
# packages can run scripts/gpu_check.sh without building anything:
#   bin/   the test binaries with GPU tests, the GPU benchmarks, the LLaMA example
#   lib/   edkm's shared libraries and the others such a machine may lack (SLEEF, SentencePiece,
#          PCRE2, Google Benchmark, ...): everything ldd finds except torch / c10 / CUDA / driver libraries
#          (the machine's torch wheel and its nvidia/*/lib have them) and glibc / libstdc++ / libgcc
#   data/  the small corpus the LLaMA example trains on
#   MANIFEST.txt  git commit (and local changes), build flags, versions, files and sizes
#
#   bash scripts/gpu_bundle.sh
#
# Environment: EDKM_GPU_BUILD_DIR (default build-gpu/; never build/), EDKM_GPU_BUNDLE_DIR (default
# gpu_bundle/), EDKM_GPU_BUNDLE_MAX_MIB (default 60: the copy to the GPU machine holds 64 MiB with
# the working tree), EDKM_JOBS (default 2), TORCH_CUDA_ARCH_LIST (default 9.0; must include 9.0).
# shellcheck source=scripts/gpu_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_common.sh"  # here, root, bundle
build="${EDKM_GPU_BUILD_DIR:-$root/build-gpu}"
max_mib="${EDKM_GPU_BUNDLE_MAX_MIB:-60}"
die() { echo "gpu_bundle.sh: $*" >&2; exit 1; }

# build/ is the everyday (CPU-tested) build: a CUDA-forced reconfigure there would disturb it.
[ "$(realpath -m "$build")" != "$(realpath -m "$root/build")" ] || die "EDKM_GPU_BUILD_DIR must not be build/"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
case " ${TORCH_CUDA_ARCH_LIST//;/ } " in
  *" 9.0 "* | *" 9.0+PTX "*) ;;
  *) die "TORCH_CUDA_ARCH_LIST='$TORCH_CUDA_ARCH_LIST' lacks 9.0: the H200 is sm_90" ;;
esac

tests=(dkm_test memory_test offload_test palettizer_test nn_test model_test)   # every binary with a GPU test
benches=(edkm_bench_ablation edkm_bench_dkm_memory edkm_bench_kernels edkm_bench_lut_inference edkm_bench_utils_memory
  edkm_bench_chart)
examples=(edkm_llama_compress edkm_llama_generate)                  # train / decode on --device cuda

# EDKM_CUDA=ON: a build that silently fell back to CPU kernels would make the GPU check pointless.
# Shared edkm libraries, copied into lib/ with the others (ldd finds them below): one copy of the
# CUDA kernels' machine code. Statically linked, each of the 14 binaries carried its own (6-10 MiB
# each, 86 MiB in all against the 60 MiB limit). gpu_check.sh puts lib/ first on LD_LIBRARY_PATH,
# so the binaries' build-tree run paths, which do not exist on the GPU machine, are never needed.
EDKM_SHARED_LIBS=ON EDKM_BUILD_DIR="$build" EDKM_TARGET=edkm_core EDKM_JOBS="${EDKM_JOBS:-2}" bash "$here/build.sh" \
  -DEDKM_BUILD_TESTS=ON -DEDKM_BUILD_EXAMPLES=ON -DEDKM_BUILD_BENCHMARKS=ON -DEDKM_CUDA=ON
cmake --build "$build" -j"${EDKM_JOBS:-2}" --target "${tests[@]}" "${benches[@]}" "${examples[@]}"

# Every .cu object must carry sm_90 machine code (not only PTX for another architecture).
cu_flags="$(awk '/^build [^:]*\.cu\.o:/ {cu = 1; next} /^build / {cu = 0} cu && /^  FLAGS =/' "$build/build.ninja")"
[ -n "$cu_flags" ] || die "no CUDA objects in $build/build.ninja: edkm was built without its CUDA kernels"
if grep -v -q 'sm_90' <<<"$cu_flags"; then die "a CUDA object of $build is not compiled for sm_90"; fi
archs="$(grep -o 'code=[^ ]*' <<<"$cu_flags" | sort -u | tr '\n' ' ')"

# Torch, c10, CUDA and driver libraries come from the GPU machine's torch wheel (matching
# versions); the C/C++ runtime from its system. Both by name and by where ldd found them.
torch_lib="$(dirname "$(grep -m1 -o '/[^ ;]*/libc10\.so' "$build/CMakeCache.txt")")"
site="$(cd "$torch_lib/../.." && pwd)"
skip_name='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libutil|libresolv|libstdc\+\+|libgcc_s'
skip_name+='|libtorch|libc10|libcaffe2|libshm|libgomp|libcuda|libcudart|libcublas|libcufft|libcurand|libcusparse'
skip_name+='|libcusolver|libcudnn|libnccl|libnvJitLink|libnvrtc|libnvshmem|libcupti|libcufile|libnvToolsExt)([.-]|$)'

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/data"
for t in "${tests[@]}"; do cp "$build/tests/$t" "$bundle/bin/"; done
for t in "${benches[@]}"; do cp "$build/benchmarks/$t" "$bundle/bin/"; done
for t in "${examples[@]}"; do cp "$build/examples/$t" "$bundle/bin/"; done
# The SentencePiece module, dlopened (so not in ldd's list): the binaries look for it in ../lib.
spm="$build/src/libedkm_sentencepiece.so"
[ ! -f "$spm" ] || cp "$spm" "$bundle/lib/"
declare -A libs=()
for b in "$bundle"/bin/* "$bundle"/lib/libedkm_sentencepiece.so; do
  [ -f "$b" ] || continue
  missing="$(ldd "$b" | grep 'not found' || true)"
  [ -z "$missing" ] || die "$(basename "$b") has unresolved libraries here: $missing"
  while read -r name _ path _; do
    [ -n "${path:-}" ] && [ "${path#/}" != "$path" ] || continue    # vdso / loader lines
    [[ "$name" =~ $skip_name ]] && continue
    case "$(realpath "$path")" in "$site"/* | /usr/local/cuda*) continue ;; esac
    libs["$name"]="$path"
  done < <(ldd "$b")
done
for name in "${!libs[@]}"; do cp -L "${libs[$name]}" "$bundle/lib/$name"; done

# The LLaMA example's corpus: the licence text its ctest uses (the GPU machine may lack it).
corpus=/usr/share/common-licenses/GPL-3
[ -s "$corpus" ] || die "$corpus is missing (Debian base-files): the LLaMA example needs a corpus"
cp "$corpus" "$bundle/data/GPL-3"

# Symbols only serve backtraces; stripping keeps the bundle well inside the copy limit.
strip --strip-unneeded "$bundle"/bin/* "$bundle"/lib/*

glibc_need="$(for f in "$bundle"/bin/* "$bundle"/lib/*; do objdump -T "$f"; done |
  grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)"
glibcxx_need="$(for f in "$bundle"/bin/* "$bundle"/lib/*; do objdump -T "$f"; done |
  grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -n1)"
torch_version="$(grep -m1 -o 'LibTorch [0-9][^ ]*' "$build/configure.log" | cut -d' ' -f2 || true)"
cuda_version="$(nvcc --version | grep -o 'release [0-9.]*' | cut -d' ' -f2)"
{
  echo "# edkm GPU bundle: made by scripts/gpu_bundle.sh, read by scripts/gpu_check.sh"
  echo "created=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git_commit=$(git -C "$root" rev-parse HEAD)"
  echo "git_local_changes=$(git -C "$root" status --porcelain | awk '{print $2}' | tr '\n' ' ')"
  echo "torch_version=$torch_version"
  echo "cuda_version=$cuda_version"
  echo "torch_cuda_arch_list=$TORCH_CUDA_ARCH_LIST"
  echo "cuda_code=$archs"
  echo "build_type=$(grep -m1 '^CMAKE_BUILD_TYPE:' "$build/CMakeCache.txt" | cut -d= -f2)"
  echo "cmake_flags=-DEDKM_BUILD_TESTS=ON -DEDKM_BUILD_EXAMPLES=ON -DEDKM_BUILD_BENCHMARKS=ON -DEDKM_CUDA=ON"
  echo "compiler=$(c++ --version | head -n1)"
  echo "built_on=$(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -n1)"
  echo "needs=$glibc_need $glibcxx_need"
  echo "# files (bytes, path)"
  (cd "$bundle" && find bin lib data -type f -printf '%s %p\n' | sort -k2)
} >"$bundle/MANIFEST.txt"

bytes="$(du -sb "$bundle" | cut -f1)"
mib="$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')"
if [ "$bytes" -gt $((max_mib * 1048576)) ]; then
  die "the bundle is $mib MiB, over the $max_mib MiB limit (EDKM_GPU_BUNDLE_MAX_MIB): the copy to the GPU \
machine would not fit; drop a binary from the lists at the top of this script"
fi
echo "gpu_bundle.sh: $bundle: $mib MiB ($(ls "$bundle/bin" | wc -l) binaries, $(ls "$bundle/lib" | wc -l) libraries:" \
  "$(ls "$bundle/lib" | tr '\n' ' ')); CUDA $archs"
