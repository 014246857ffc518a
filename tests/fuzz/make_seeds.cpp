// Writes a few valid files (plain tensors, palettes of several geometries) as the fuzzer's seeds.
#include <cstdint>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors_core.h"

using namespace edkm::io;

namespace {

void palette(const std::string& name, PaletteEntry p, uint64_t lut_entries, std::vector<TensorBytes>& out,
             std::map<std::string, std::string>& meta, std::vector<std::vector<uint8_t>>& keep) {
  uint64_t n = 1;
  for (auto d : p.shape) n *= d;
  const uint64_t count = n / p.cluster_dim;
  std::vector<uint8_t> idx(count);
  for (uint64_t i = 0; i < count; ++i) idx[i] = static_cast<uint8_t>((i * 7 + 3) % (1u << p.bits));
  keep.emplace_back(packed_bytes(count, p.bits));
  pack_indices(idx.data(), count, p.bits, keep.back().data());
  out.push_back({name + ".indices", "U8", {keep.back().size()}, keep.back().data(), keep.back().size()});
  keep.emplace_back(lut_entries * 4, 0x3f);
  const uint64_t groups = lut_entries / (uint64_t{1} << p.bits) / p.cluster_dim;
  out.push_back(
      {name + ".lut", "F32", {groups, uint64_t{1} << p.bits, p.cluster_dim}, keep.back().data(), keep.back().size()});
  if (p.scale) {
    keep.emplace_back(p.shape[0] * 4, 0x3f);
    out.push_back({name + ".scale", "F32", {p.shape[0], 1}, keep.back().data(), keep.back().size()});
  }
  meta[kPaletteKeyPrefix + name] = palette_metadata(p);
}

// A palette entry of an F32 weight.
PaletteEntry f32_entry(std::vector<uint64_t> shape, int bits, const std::string& granularity = "per_tensor") {
  PaletteEntry p;
  p.shape = std::move(shape);
  p.dtype = "F32";
  p.bits = bits;
  p.granularity = granularity;
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : ".";
  std::vector<std::vector<uint8_t>> keep;
  {
    std::vector<float> a(12, 0.5f);
    std::vector<int64_t> b = {1, 2, 3};
    write_file(dir + "/plain.safetensors",
               {{"a", "F32", {3, 4}, a.data(), a.size() * 4}, {"b", "I64", {3}, b.data(), b.size() * 8}},
               {{"format", "pt"}});
  }
  {
    std::vector<TensorBytes> t;
    std::map<std::string, std::string> meta = {{kFormatKey, kFormatValue}};
    palette("fc.weight", f32_entry({6, 5}, 3), 8, t, meta, keep);
    std::vector<float> bias(6, 0.25f);
    t.push_back({"fc.bias", "F32", {6}, bias.data(), 24});
    write_file(dir + "/palette.safetensors", t, meta);
  }
  {
    std::vector<TensorBytes> t;
    std::map<std::string, std::string> meta = {{kFormatKey, kFormatValue}};
    PaletteEntry p = f32_entry({8, 3}, 2, "per_grouped_channel");
    p.group_size = 4;
    p.cluster_dim = 2;
    p.scale = true;
    palette("g", p, 2 * 4 * 2, t, meta, keep);
    palette("v", f32_entry({3}, 1), 2, t, meta, keep);
    write_file(dir + "/grouped.safetensors", t, meta);
  }
  // Every seed must pass validation, or the fuzzer would start from rejected inputs only.
  for (const char* name : {"plain", "palette", "grouped"}) {
    std::ifstream f(dir + "/" + name + ".safetensors", std::ios::binary);
    const std::string bytes{std::istreambuf_iterator<char>(f), {}};
    try {
      const auto h = parse_file(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      std::cout << name << ": " << h.tensors.size() << " tensors, " << parse_palettes(h).size() << " palettes\n";
    } catch (const FormatError& e) {
      std::cerr << "seed " << name << " is rejected: " << e.what() << "\n";
      return 1;
    }
  }
  return 0;
}
