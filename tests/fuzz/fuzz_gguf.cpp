// libFuzzer target: the GGUF header parser and the dequantization, exactly as the loader runs them
// (src/io/gguf_core.cpp, no LibTorch). Whatever the input, parsing must either throw
// io::FormatError or return a header whose every tensor lies inside the input; then every readable
// tensor is dequantized from the input's bytes and every metadata array element read.
// Built and run by run_fuzzer.sh (ctest fuzz_gguf) with clang -fsanitize=fuzzer,address,undefined.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "io/gguf_core.h"

namespace {

using namespace edkm::io::gguf;

void walk(const Value& v) {
  if (v.type != ValueType::ARRAY) return;
  if (v.strings.size() + v.arrays.size() + v.raw.size() == 0 && v.count != 0) __builtin_trap();
  for (const Value& a : v.arrays) walk(a);
  if (!v.raw.empty()) {
    for (uint64_t k = 0; k < v.count; ++k) (void)v.float_at(k);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const File f = parse(data, size);
    for (const auto& [key, v] : f.metadata) walk(v);
    for (const TensorInfo& t : f.tensors) {
      if (f.data_start + t.offset + t.nbytes > size) __builtin_trap();  // validated in bounds
      if (!can_dequantize(t.type)) continue;
      std::vector<float> out(t.numel);
      dequantize(t.type, data + f.data_start + t.offset, t.numel, out.data());
    }
  } catch (const edkm::io::FormatError&) {
  }
  return 0;
}
