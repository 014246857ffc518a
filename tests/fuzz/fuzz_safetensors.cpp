// libFuzzer target: the safetensors header parser and the palette validation, exactly as the
// loader runs them (src/io/safetensors_core.cpp, no LibTorch). Whatever the input, parsing must
// either throw io::FormatError or return entries whose every read stays inside the input.
// Built and run by run_fuzzer.sh (ctest fuzz_safetensors) with clang -fsanitize=fuzzer,address.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "io/safetensors_core.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace edkm::io;
  try {
    const Header h = parse_file(data, size);
    const auto palettes = parse_palettes(h);
    // The reads a loader performs: every tensor's bytes, and every palette's indices unpacked.
    unsigned sum = 0;
    for (const auto& [name, e] : h.tensors) {
      for (uint64_t i = e.begin; i < e.end; ++i) sum += data[h.data_start + i];
    }
    for (const auto& [name, p] : palettes) {
      const TensorEntry& idx = h.tensors.at(name + ".indices");
      std::vector<uint8_t> out(p.groups * p.vectors);
      unpack_indices(data + h.data_start + idx.begin, idx.nbytes(), out.size(), p.bits, out.data());
      for (uint8_t v : out) {
        if (v >= (1u << p.bits)) __builtin_trap();  // an index outside the LUT
      }
      const TensorEntry& lut = h.tensors.at(name + ".lut");
      if (lut.shape.at(1) != (uint64_t{1} << p.bits)) __builtin_trap();
    }
    // Serialising the parsed header again gives a header that parses.
    std::vector<TensorBytes> again;
    for (const auto& [name, e] : h.tensors) again.push_back({name, e.dtype, e.shape, nullptr, e.nbytes()});
    const std::string text = serialize_header(again, h.metadata);
    (void)parse_header(text.data(), text.size(), 8 + text.size() + h.buffer_bytes);
    (void)sum;
  } catch (const FormatError&) {
  }
  return 0;
}
