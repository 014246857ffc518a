// Writes a few valid GGUF files (metadata of every type, nested arrays, tensors of every type the
// reader dequantizes, a custom alignment) as the GGUF fuzzer's seeds; each must pass validation.
#include <fstream>
#include <iostream>
#include <string>

#include "gguf_builder.h"

using edkm::test::GgufBuilder;
using VT = edkm::io::gguf::ValueType;

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : ".";
  std::vector<std::pair<std::string, std::string>> seeds;
  {
    GgufBuilder b(2);
    b.kv_string("general.architecture", "llama").kv_u32("llama.block_count", 1).kv_f32("f", 0.5f);
    b.key("i8", VT::INT8).u8(0xfe).key("b", VT::BOOL).u8(1).key("u64", VT::UINT64).u64(7);
    b.key("d", VT::FLOAT64).f64(2.5).key("i64", VT::INT64).u64(3).key("u16", VT::UINT16).u16(9);
    b.key("tokens", VT::ARRAY).u32(static_cast<uint32_t>(VT::STRING)).u64(2).str("a").str("bc");
    b.key("ints", VT::ARRAY).u32(static_cast<uint32_t>(VT::INT32)).u64(2).u32(1).u32(2);
    b.key("nested", VT::ARRAY).u32(static_cast<uint32_t>(VT::ARRAY)).u64(1);
    b.u32(static_cast<uint32_t>(VT::FLOAT32)).u64(1).f32(1.0f);
    seeds.emplace_back("metadata.gguf", b.data("").bytes());
  }
  {
    // One tensor of every readable type, 256 elements each, 32-byte aligned.
    GgufBuilder b;
    std::string data;
    for (uint32_t type : {0u, 1u, 30u, 2u, 3u, 6u, 7u, 8u, 10u, 11u, 12u, 13u, 14u}) {
      const auto tr = edkm::io::gguf::type_traits(type);
      b.tensor("t" + std::to_string(type), {256}, type, data.size());
      for (uint64_t k = 0; k < 256 / tr.block_size * tr.type_size; ++k) data.push_back(static_cast<char>(k * 37 % 23));
      data.resize((data.size() + 31) / 32 * 32, '\0');
    }
    seeds.emplace_back("types.gguf", b.data(data).bytes());
  }
  {
    GgufBuilder b;
    b.kv_u32("general.alignment", 64).tensor("w", {32, 2}, 8, 0).tensor("n", {4}, 0, 128);
    std::string data(128, '\x01');
    data += std::string(16, '\0');
    seeds.emplace_back("aligned.gguf", b.data(data, 64).bytes());
  }
  for (const auto& [name, bytes] : seeds) {
    std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
    try {
      const auto f = edkm::io::gguf::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      std::cout << name << ": " << f.metadata.size() << " keys, " << f.tensors.size() << " tensors\n";
    } catch (const edkm::io::FormatError& e) {
      std::cerr << "seed " << name << " is rejected: " << e.what() << "\n";
      return 1;
    }
  }
  return 0;
}
