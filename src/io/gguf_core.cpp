#include "io/gguf_core.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

// Every check happens on the header and the file size before any tensor byte is read; arithmetic
// on untrusted numbers is overflow-checked, and nothing is allocated for a count before the bytes
// it claims are known to be in the file.

namespace edkm::io::gguf {
namespace {

[[noreturn]] void fail(const std::string& what) { throw FormatError(what); }

uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& what) {
  uint64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) fail(what + " overflows 64 bits");
  return r;
}

uint64_t checked_add(uint64_t a, uint64_t b, const std::string& what) {
  uint64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) fail(what + " overflows 64 bits");
  return r;
}

uint64_t element_bytes(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::BOOL:
      return 1;
    case ValueType::UINT16:
    case ValueType::INT16:
      return 2;
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::FLOAT32:
      return 4;
    case ValueType::UINT64:
    case ValueType::INT64:
    case ValueType::FLOAT64:
      return 8;
    default:
      return 0;
  }
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::FLOAT64); }

// Little-endian reads at a cursor that never passes the end of the buffer.
class Reader {
 public:
  Reader(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  void need(uint64_t n, const std::string& what) const {
    if (n > left()) {
      fail(what + " needs " + std::to_string(n) + " bytes at offset " + std::to_string(pos_) + " but only " +
           std::to_string(left()) + " remain (truncated file?)");
    }
  }
  uint64_t uint(int bytes, const std::string& what) {
    need(static_cast<uint64_t>(bytes), what);
    uint64_t v = 0;
    for (int k = bytes - 1; k >= 0; --k) v = (v << 8) | data_[pos_ + static_cast<uint64_t>(k)];
    pos_ += static_cast<uint64_t>(bytes);
    return v;
  }
  uint32_t u32(const std::string& what) { return static_cast<uint32_t>(uint(4, what)); }
  uint64_t u64(const std::string& what) { return uint(8, what); }
  std::string string(const std::string& what, uint64_t max_bytes = std::numeric_limits<uint64_t>::max()) {
    const uint64_t n = u64(what + " length");
    if (n > max_bytes)
      fail(what + " is " + std::to_string(n) + " bytes long (limit " + std::to_string(max_bytes) + ")");
    need(n, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  const uint8_t* bytes(uint64_t n, const std::string& what) {
    need(n, what);
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

Value read_value(Reader& r, ValueType type, int depth, const std::string& what);

void read_scalar(Reader& r, Value& v, const std::string& what) {
  switch (v.type) {
    case ValueType::UINT8:
    case ValueType::UINT16:
    case ValueType::UINT32:
    case ValueType::UINT64:
      v.u = r.uint(static_cast<int>(element_bytes(v.type)), what);
      break;
    case ValueType::INT8:
    case ValueType::INT16:
    case ValueType::INT32:
    case ValueType::INT64: {
      const int n = static_cast<int>(element_bytes(v.type));
      const uint64_t u = r.uint(n, what);
      const int shift = 64 - 8 * n;  // sign-extend
      v.i = shift == 0 ? static_cast<int64_t>(u) : static_cast<int64_t>(u << shift) >> shift;
      break;
    }
    case ValueType::FLOAT32: {
      const uint32_t u = r.u32(what);
      float x;
      std::memcpy(&x, &u, 4);
      v.f = x;
      break;
    }
    case ValueType::FLOAT64: {
      const uint64_t u = r.u64(what);
      std::memcpy(&v.f, &u, 8);
      break;
    }
    case ValueType::BOOL: {
      v.u = r.uint(1, what);
      if (v.u > 1) fail(what + ": a bool must be 0 or 1, got " + std::to_string(v.u));
      break;
    }
    default:
      fail(what + ": not a scalar type");
  }
}

Value read_value(Reader& r, ValueType type, int depth, const std::string& what) {
  Value v;
  v.type = type;
  if (type == ValueType::STRING) {
    v.str = r.string(what);
  } else if (type == ValueType::ARRAY) {
    if (depth >= kMaxArrayDepth)
      fail(what + ": arrays nested deeper than " + std::to_string(kMaxArrayDepth) + " levels");
    const uint32_t et = r.u32(what + ": array element type");
    if (!known_value_type(et)) fail(what + ": unknown array element type " + std::to_string(et));
    v.elem_type = static_cast<ValueType>(et);
    v.count = r.u64(what + ": array length");
    // The smallest encoding of one element bounds the count by the bytes left.
    const uint64_t min_bytes = v.elem_type == ValueType::STRING  ? 8
                               : v.elem_type == ValueType::ARRAY ? 12
                                                                 : element_bytes(v.elem_type);
    if (v.count > r.left() / min_bytes) {
      fail(what + ": array of " + std::to_string(v.count) + " " + value_type_name(v.elem_type) +
           " does not fit in the " + std::to_string(r.left()) + " bytes left");
    }
    if (v.elem_type == ValueType::STRING) {
      v.strings.reserve(v.count);
      for (uint64_t k = 0; k < v.count; ++k) v.strings.push_back(r.string(what + "[" + std::to_string(k) + "]"));
    } else if (v.elem_type == ValueType::ARRAY) {
      if (v.count > kMaxNestedArrays) {
        fail(what + ": " + std::to_string(v.count) + " nested arrays (at most " + std::to_string(kMaxNestedArrays) +
             ")");
      }
      v.arrays.reserve(v.count);
      for (uint64_t k = 0; k < v.count; ++k) {
        v.arrays.push_back(read_value(r, ValueType::ARRAY, depth + 1, what + "[" + std::to_string(k) + "]"));
      }
    } else {
      const uint64_t n = v.count * min_bytes;  // bounded by left() above
      const uint8_t* p = r.bytes(n, what);
      v.raw.assign(p, p + n);
      if (v.elem_type == ValueType::BOOL) {
        for (uint8_t b : v.raw) {
          if (b > 1) fail(what + ": a bool must be 0 or 1, got " + std::to_string(b));
        }
      }
    }
  } else {
    read_scalar(r, v, what);
  }
  return v;
}

std::string dims_str(const std::vector<uint64_t>& ne) {
  std::string s = "[";
  for (size_t k = 0; k < ne.size(); ++k) s += (k ? ", " : "") + std::to_string(ne[k]);
  return s + "]";
}

}  // namespace

std::string value_type_name(ValueType t) {
  static const char* names[] = {"UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",  "FLOAT32",
                                "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64"};
  const auto k = static_cast<uint32_t>(t);
  return k < sizeof(names) / sizeof(names[0]) ? names[k] : "type " + std::to_string(k);
}

bool Value::is_integer() const {
  switch (type) {
    case ValueType::UINT8:
    case ValueType::UINT16:
    case ValueType::UINT32:
    case ValueType::UINT64:
    case ValueType::INT8:
    case ValueType::INT16:
    case ValueType::INT32:
    case ValueType::INT64:
      return true;
    default:
      return false;
  }
}

int64_t Value::int_at(uint64_t k) const {
  const uint64_t n = element_bytes(elem_type);
  if (type != ValueType::ARRAY || n == 0 || elem_type == ValueType::FLOAT32 || elem_type == ValueType::FLOAT64) {
    fail("not an array of integers");
  }
  if (k >= count) fail("array index " + std::to_string(k) + " out of range");
  uint64_t u = 0;
  for (uint64_t b = n; b-- > 0;) u = (u << 8) | raw[k * n + b];
  const bool is_signed = elem_type == ValueType::INT8 || elem_type == ValueType::INT16 ||
                         elem_type == ValueType::INT32 || elem_type == ValueType::INT64;
  const int shift = 64 - 8 * static_cast<int>(n);
  if (is_signed) return shift == 0 ? static_cast<int64_t>(u) : static_cast<int64_t>(u << shift) >> shift;
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) fail("array element exceeds int64");
  return static_cast<int64_t>(u);
}

double Value::float_at(uint64_t k) const {
  if (type != ValueType::ARRAY) fail("not an array");
  if (k >= count) fail("array index " + std::to_string(k) + " out of range");
  if (elem_type == ValueType::FLOAT32) {
    float x;
    std::memcpy(&x, raw.data() + 4 * k, 4);
    return x;
  }
  if (elem_type == ValueType::FLOAT64) {
    double x;
    std::memcpy(&x, raw.data() + 8 * k, 8);
    return x;
  }
  return static_cast<double>(int_at(k));
}

TypeTraits type_traits(uint32_t t) {
  constexpr uint64_t QK_K = 256;
  static constexpr std::pair<TensorType, TypeTraits> kTypes[] = {
      {TensorType::F32, {"F32", 1, 4}},
      {TensorType::F16, {"F16", 1, 2}},
      {TensorType::Q4_0, {"Q4_0", 32, 2 + 16}},
      {TensorType::Q4_1, {"Q4_1", 32, 2 + 2 + 16}},
      {TensorType::Q5_0, {"Q5_0", 32, 2 + 4 + 16}},
      {TensorType::Q5_1, {"Q5_1", 32, 2 + 2 + 4 + 16}},
      {TensorType::Q8_0, {"Q8_0", 32, 2 + 32}},
      {TensorType::Q8_1, {"Q8_1", 32, 4 + 4 + 32}},
      {TensorType::Q2_K, {"Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4}},
      {TensorType::Q3_K, {"Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12}},
      {TensorType::Q4_K, {"Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12}},
      {TensorType::Q5_K, {"Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12}},
      {TensorType::Q6_K, {"Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16}},
      {TensorType::Q8_K, {"Q8_K", QK_K, 4 + QK_K + QK_K / 8}},
      {TensorType::IQ2_XXS, {"IQ2_XXS", QK_K, 2 + QK_K / 4}},
      {TensorType::IQ2_XS, {"IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32}},
      {TensorType::IQ3_XXS, {"IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8}},
      {TensorType::IQ1_S, {"IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16}},
      {TensorType::IQ4_NL, {"IQ4_NL", 32, 2 + 16}},
      {TensorType::IQ3_S, {"IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4}},
      {TensorType::IQ2_S, {"IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16}},
      {TensorType::IQ4_XS, {"IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64}},
      {TensorType::I8, {"I8", 1, 1}},
      {TensorType::I16, {"I16", 1, 2}},
      {TensorType::I32, {"I32", 1, 4}},
      {TensorType::I64, {"I64", 1, 8}},
      {TensorType::F64, {"F64", 1, 8}},
      {TensorType::IQ1_M, {"IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32}},
      {TensorType::BF16, {"BF16", 1, 2}},
      {TensorType::TQ1_0, {"TQ1_0", QK_K, 2 + 4 * 13}},
      {TensorType::TQ2_0, {"TQ2_0", QK_K, 2 + 64}},
      {TensorType::MXFP4, {"MXFP4", 32, 1 + 16}},
  };
  for (const auto& [type, traits] : kTypes)
    if (static_cast<uint32_t>(type) == t) return traits;
  return {};
}

std::string type_name(uint32_t t) {
  const TypeTraits tr = type_traits(t);
  return tr.name ? tr.name : "type " + std::to_string(t);
}

File parse(const uint8_t* data, size_t size) {
  File f;
  Reader r(data, size);
  const uint8_t* magic = r.bytes(4, "the magic");
  if (std::memcmp(magic, "GGUF", 4) != 0) fail("not a GGUF file (the first 4 bytes are not \"GGUF\")");
  f.version = r.u32("the version");
  if (f.version != 2 && f.version != 3) {
    if ((f.version & 0xffff) == 0 && f.version != 0) fail("big-endian GGUF files are not supported");
    fail("GGUF version " + std::to_string(f.version) + " is not supported (2 or 3)");
  }
  const uint64_t n_tensors = r.u64("the tensor count");
  const uint64_t n_kv = r.u64("the metadata count");
  // Smallest encodings: a key/value 8 + 4 + 1 bytes, a tensor info 8 + 4 + 4 + 8 bytes.
  if (n_kv > r.left() / 13) {
    fail(std::to_string(n_kv) + " metadata entries cannot fit in the " + std::to_string(r.left()) + " bytes left");
  }
  if (n_tensors > r.left() / 24) {
    fail(std::to_string(n_tensors) + " tensors cannot fit in the " + std::to_string(r.left()) + " bytes left");
  }
  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string what = "metadata entry " + std::to_string(k);
    std::string key = r.string(what + " key", kMaxNameBytes);
    if (key.empty()) fail(what + " has an empty key");
    if (f.metadata.count(key)) fail("metadata key '" + key + "' appears twice");
    const uint32_t t = r.u32("the type of '" + key + "'");
    if (!known_value_type(t)) fail("metadata '" + key + "' has unknown value type " + std::to_string(t));
    f.metadata[key] = read_value(r, static_cast<ValueType>(t), 0, "metadata '" + key + "'");
    f.keys.push_back(std::move(key));
  }
  if (auto it = f.metadata.find("general.alignment"); it != f.metadata.end()) {
    const Value& a = it->second;
    if (a.type != ValueType::UINT32) fail("general.alignment must be UINT32, got " + value_type_name(a.type));
    if (a.u == 0 || (a.u & (a.u - 1)) != 0) fail("general.alignment " + std::to_string(a.u) + " is not a power of two");
    f.alignment = a.u;
  }
  f.tensors.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo t;
    t.name = r.string("the name of tensor " + std::to_string(k), kMaxNameBytes);
    if (t.name.empty()) fail("tensor " + std::to_string(k) + " has an empty name");
    const std::string what = "tensor '" + t.name + "'";
    if (f.tensor_index.count(t.name)) fail(what + " appears twice");
    const uint32_t n_dims = r.u32(what + ": n_dims");
    if (n_dims > kMaxDims)
      fail(what + " has " + std::to_string(n_dims) + " dims (at most " + std::to_string(kMaxDims) + ")");
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = r.u64(what + ": dims");
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail(what + ": dim " + std::to_string(d) + " = " + std::to_string(ne) + " exceeds int64");
      }
      t.ne.push_back(ne);
    }
    t.type = r.u32(what + ": type");
    t.offset = r.u64(what + ": offset");
    const TypeTraits tr = type_traits(t.type);
    if (tr.block_size == 0) fail(what + " has unknown ggml type " + std::to_string(t.type));
    t.numel = 1;
    for (uint64_t ne : t.ne) t.numel = checked_mul(t.numel, ne, what + ": element count");
    if (t.numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(what + ": element count exceeds int64");
    const uint64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
    if (ne0 % tr.block_size != 0) {
      fail(what + ": the row length ne[0] = " + std::to_string(ne0) + " is not a multiple of the " + tr.name +
           " block size " + std::to_string(tr.block_size));
    }
    t.nbytes = checked_mul(t.numel / tr.block_size, tr.type_size, what + ": byte size");
    if (t.offset % f.alignment != 0) {
      fail(what + ": offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
           std::to_string(f.alignment));
    }
    f.tensor_index[t.name] = f.tensors.size();
    f.tensors.push_back(std::move(t));
  }
  // The data section starts at the next multiple of the alignment.
  const uint64_t pad = (f.alignment - r.pos() % f.alignment) % f.alignment;
  f.data_start = r.pos() + pad;
  if (f.data_start > size) {
    if (!f.tensors.empty()) fail("the file ends before its data section (truncated file?)");
    f.data_start = size;
  }
  const uint64_t data_bytes = size - f.data_start;
  std::vector<const TensorInfo*> order;
  for (const auto& t : f.tensors) {
    const uint64_t end = checked_add(t.offset, t.nbytes, "tensor '" + t.name + "': end offset");
    if (end > data_bytes) {
      fail("tensor '" + t.name + "' (" + type_name(t.type) + " " + dims_str(t.ne) + ", " + std::to_string(t.nbytes) +
           " bytes at offset " + std::to_string(t.offset) + ") is past the end of the " + std::to_string(data_bytes) +
           "-byte data section (truncated file?)");
    }
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->offset != b->offset ? a->offset < b->offset : a->nbytes < b->nbytes;
  });
  for (size_t k = 1; k < order.size(); ++k) {
    const TensorInfo& prev = *order[k - 1];
    if (order[k]->offset < prev.offset + prev.nbytes) {
      fail("tensor '" + order[k]->name + "' at offset " + std::to_string(order[k]->offset) + " overlaps tensor '" +
           prev.name + "' (bytes " + std::to_string(prev.offset) + ".." + std::to_string(prev.offset + prev.nbytes) +
           ")");
    }
  }
  return f;
}

// --- dequantization -----------------------------------------------------------------------------
// Each formula is evaluated in fp32 in the order the gguf package's numpy code uses, so results are
// equal bit for bit (this file is compiled without floating-point contraction).

namespace {

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf, NaN with its payload
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while ((man & 0x400) == 0) {
      man <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float f16_at(const uint8_t* p) { return fp16_to_fp32(static_cast<uint16_t>(p[0] | (p[1] << 8))); }

// Q4_K / Q5_K: scale and min of sub-block j (0..7) from the 12 packed bytes.
void scale_min_k4(const uint8_t* q, int j, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void block_q4_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0f) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

void block_q4_1(const uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    const float p0 = d * static_cast<float>(qs[j] & 0x0f), p1 = d * static_cast<float>(qs[j] >> 4);
    y[j] = p0 + m;
    y[j + 16] = p1 + m;
  }
}

void block_q5_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  const uint32_t qh = static_cast<uint32_t>(b[2]) | (static_cast<uint32_t>(b[3]) << 8) |
                      (static_cast<uint32_t>(b[4]) << 16) | (static_cast<uint32_t>(b[5]) << 24);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = static_cast<int>((qs[j] & 0x0f) | (((qh >> j) & 1) << 4));
    const int hi = static_cast<int>((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

void block_q5_1(const uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  const uint32_t qh = static_cast<uint32_t>(b[4]) | (static_cast<uint32_t>(b[5]) << 8) |
                      (static_cast<uint32_t>(b[6]) << 16) | (static_cast<uint32_t>(b[7]) << 24);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const uint32_t lo = (qs[j] & 0x0fu) | (((qh >> j) & 1u) << 4);
    const uint32_t hi = (qs[j] >> 4u) | (((qh >> (j + 16)) & 1u) << 4);
    const float p0 = d * static_cast<float>(lo), p1 = d * static_cast<float>(hi);
    y[j] = p0 + m;
    y[j + 16] = p1 + m;
  }
}

void block_q8_0(const uint8_t* b, float* y) {
  const float d = f16_at(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2 bits), d, dmin.
void block_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = f16_at(b + 80), dmin = f16_at(b + 82);
  for (int e = 0; e < 256; ++e) {
    const int chunk = e / 128, shift = (e % 128) / 32, l = e % 32;
    const uint8_t s = scales[e / 16];
    const float dl = d * static_cast<float>(s & 0x0f), ml = dmin * static_cast<float>(s >> 4);
    const float q = static_cast<float>((qs[chunk * 32 + l] >> (2 * shift)) & 3);
    const float p = dl * q;
    y[e] = p - ml;
  }
}

// Q3_K: hmask[32] (high bit, set = no offset), qs[64] (low 2 bits), scales[12] (16 x 6 bits), d.
void block_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = f16_at(b + 108);
  float dl[16];
  for (int i = 0; i < 16; ++i) {
    const int low = (i < 8 ? sc[i] : sc[i - 8] >> 4) & 0x0f;
    const int high = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
    dl[i] = d * static_cast<float>((low | (high << 4)) - 32);
  }
  for (int e = 0; e < 256; ++e) {
    const int chunk = e / 128, shift = (e % 128) / 32, l = e % 32;
    const int ql = (qs[chunk * 32 + l] >> (2 * shift)) & 3;
    const int h = (hmask[l] >> (e / 32)) & 1;
    y[e] = dl[e / 16] * static_cast<float>(ql - (h ? 0 : 4));
  }
}

// Q4_K: d, dmin, scales[12] (8 x 6-bit scale and min), qs[128]; Q5_K adds qh[32] (bit j: the
// fifth bit of sub-block j) before qs.
void block_q45_k(const uint8_t* b, const uint8_t* qh, const uint8_t* qs, float* y) {
  const float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t* scales = b + 4;
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    scale_min_k4(scales, j, sc, m);
    const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
    for (int l = 0; l < 32; ++l) {
      const uint8_t byte = qs[(j / 2) * 32 + l];
      int q = j % 2 == 0 ? byte & 0x0f : byte >> 4;
      if (qh != nullptr) q |= ((qh[l] >> j) & 1) << 4;
      const float p = d1 * static_cast<float>(q);
      y[j * 32 + l] = p - m1;
    }
  }
}
void block_q4_k(const uint8_t* b, float* y) { block_q45_k(b, nullptr, b + 16, y); }
void block_q5_k(const uint8_t* b, float* y) { block_q45_k(b, b + 16, b + 48, y); }

// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d.
void block_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const uint8_t* scales = b + 192;
  const float d = f16_at(b + 208);
  for (int e = 0; e < 256; ++e) {
    const int chunk = e / 128, r = e % 128;
    const int low = (ql[chunk * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
    const int high = (qh[chunk * 32 + r % 32] >> (2 * (r / 32))) & 3;
    const float ds = d * static_cast<float>(static_cast<int8_t>(scales[e / 16]));
    y[e] = ds * static_cast<float>((low | (high << 4)) - 32);
  }
}

// One block of a quantized type to fp32 (type_size bytes -> block_size floats).
using BlockDecoder = void (*)(const uint8_t*, float*);

// The block decoder of type `t`; nullptr when none.
BlockDecoder block_decoder(uint32_t t) {
  static constexpr std::pair<TensorType, BlockDecoder> kDecoders[] = {
      {TensorType::Q4_0, block_q4_0}, {TensorType::Q4_1, block_q4_1}, {TensorType::Q5_0, block_q5_0},
      {TensorType::Q5_1, block_q5_1}, {TensorType::Q8_0, block_q8_0}, {TensorType::Q2_K, block_q2_k},
      {TensorType::Q3_K, block_q3_k}, {TensorType::Q4_K, block_q4_k}, {TensorType::Q5_K, block_q5_k},
      {TensorType::Q6_K, block_q6_k},
  };
  for (const auto& [type, decoder] : kDecoders)
    if (static_cast<uint32_t>(type) == t) return decoder;
  return nullptr;
}

}  // namespace

bool can_dequantize(uint32_t t) {
  const auto type = static_cast<TensorType>(t);
  return type == TensorType::F32 || type == TensorType::F16 || type == TensorType::BF16 || block_decoder(t) != nullptr;
}

void dequantize(uint32_t type, const uint8_t* src, uint64_t numel, float* dst) {
  const TypeTraits tr = type_traits(type);
  if (!can_dequantize(type)) fail("dequantizing " + type_name(type) + " is not supported");
  if (numel % tr.block_size != 0) {
    fail(std::to_string(numel) + " elements are not a multiple of the " + tr.name + " block size");
  }
  if (numel == 0) return;
  switch (static_cast<TensorType>(type)) {
    case TensorType::F32:
      std::memcpy(dst, src, numel * 4);
      return;
    case TensorType::F16:
      for (uint64_t k = 0; k < numel; ++k) dst[k] = f16_at(src + 2 * k);
      return;
    case TensorType::BF16:
      for (uint64_t k = 0; k < numel; ++k) {
        const uint32_t bits = static_cast<uint32_t>(src[2 * k] | (src[2 * k + 1] << 8)) << 16;
        std::memcpy(dst + k, &bits, 4);
      }
      return;
    default:
      break;
  }
  const BlockDecoder block = block_decoder(type);
  const uint64_t blocks = numel / tr.block_size;
  for (uint64_t k = 0; k < blocks; ++k) block(src + k * tr.type_size, dst + k * tr.block_size);
}

}  // namespace edkm::io::gguf
