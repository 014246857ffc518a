#pragma once
// GGUF bytes written field by field (little-endian), as llama.cpp's writer lays them out: the
// valid and hostile files of gguf_test and the fuzzer's seeds (fuzz/make_gguf_seeds.cpp). Plain C++.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "io/gguf_core.h"

namespace edkm::test {

// Header fields in order; bytes() fills in the counts. Example: GgufBuilder().kv_u32("a", 1).bytes().
class GgufBuilder {
 public:
  explicit GgufBuilder(uint32_t version = 3) {
    raw("GGUF", 4);
    u32(version);
    counts_at_ = bytes_.size();
    u64(0);
    u64(0);
  }
  GgufBuilder& u8(uint8_t v) { return put(v, 1); }
  GgufBuilder& u16(uint16_t v) { return put(v, 2); }
  GgufBuilder& u32(uint32_t v) { return put(v, 4); }
  GgufBuilder& u64(uint64_t v) { return put(v, 8); }
  GgufBuilder& f32(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return u32(u);
  }
  GgufBuilder& f64(double v) {
    uint64_t u;
    std::memcpy(&u, &v, 8);
    return u64(u);
  }
  GgufBuilder& str(const std::string& s) {
    u64(s.size());
    return raw(s.data(), s.size());
  }
  GgufBuilder& raw(const void* p, size_t n) {
    bytes_.append(static_cast<const char*>(p), n);
    return *this;
  }
  // A key and its type; the caller writes the value.
  GgufBuilder& key(const std::string& k, edkm::io::gguf::ValueType t) {
    ++kv_;
    str(k);
    return u32(static_cast<uint32_t>(t));
  }
  GgufBuilder& kv_string(const std::string& k, const std::string& v) { return key(k, VT::STRING).str(v); }
  GgufBuilder& kv_u32(const std::string& k, uint32_t v) { return key(k, VT::UINT32).u32(v); }
  GgufBuilder& kv_f32(const std::string& k, float v) { return key(k, VT::FLOAT32).f32(v); }
  // A tensor info (ne in ggml order); the data is appended by data().
  GgufBuilder& tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    ++tensors_;
    str(name);
    u32(static_cast<uint32_t>(ne.size()));
    for (auto d : ne) u64(d);
    u32(type);
    return u64(offset);
  }
  // Pads to the alignment and appends the data section.
  GgufBuilder& data(const std::string& d, uint64_t alignment = 32) {
    while (bytes_.size() % alignment) bytes_.push_back('\0');
    bytes_ += d;
    return *this;
  }
  std::string bytes() const {
    std::string b = bytes_;
    for (int i = 0; i < 8; ++i) b[counts_at_ + i] = static_cast<char>(tensors_ >> (8 * i));
    for (int i = 0; i < 8; ++i) b[counts_at_ + 8 + i] = static_cast<char>(kv_ >> (8 * i));
    return b;
  }
  // Overrides the counts (for hostile headers).
  GgufBuilder& counts(uint64_t tensors, uint64_t kv) {
    tensors_ = tensors;
    kv_ = kv;
    return *this;
  }

 private:
  using VT = edkm::io::gguf::ValueType;
  GgufBuilder& put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes_.push_back(static_cast<char>(v >> (8 * i)));
    return *this;
  }
  std::string bytes_;
  size_t counts_at_ = 0;
  uint64_t kv_ = 0, tensors_ = 0;
};

}  // namespace edkm::test
