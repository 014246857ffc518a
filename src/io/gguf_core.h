#pragma once
// The GGUF container (llama.cpp's model format) without LibTorch: header parsing and validation,
// and dequantization of ggml's block formats to fp32. Plain C++17, so the fuzzer (tests/fuzz/)
// builds it alone with clang and libFuzzer, like safetensors_core.
//
// File layout (little-endian), versions 2 and 3:
//   "GGUF"  u32 version  u64 tensor_count  u64 kv_count
//   kv_count x { string key, u32 value_type, value }         string: u64 length + bytes
//   tensor_count x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//   padding to `alignment` (general.alignment, default 32), then the data section; each tensor's
//   offset is relative to it and a multiple of the alignment.
// ne[0] is the fastest-varying dimension: a PyTorch [rows, cols] weight is stored as ne = {cols, rows}.
// Quantized types pack ne[0] in blocks of block_size elements, type_size bytes each.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "edkm/export.h"
#include "io/safetensors_core.h"  // FormatError

EDKM_INTERNAL_BEGIN
namespace edkm::io::gguf {

/// Metadata value types (gguf_type).
enum class ValueType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};

/// "UINT32", "STRING", ...; "type <n>" for an unknown one.
std::string value_type_name(ValueType t);

/// Deepest array nesting accepted (an array of arrays is depth 2).
constexpr int kMaxArrayDepth = 8;
/// Most elements of one array of arrays (llama.cpp writes none; each costs a Value in memory).
constexpr uint64_t kMaxNestedArrays = 1 << 16;
/// Most dimensions of a tensor (GGML_MAX_DIMS).
constexpr uint32_t kMaxDims = 4;
/// Longest key or tensor name accepted.
constexpr uint64_t kMaxNameBytes = 65535;

/// One metadata value. Scalars are held widened (integers in `u` or `i`, floats in `f`); arrays of
/// numbers or bools keep their little-endian bytes (`raw`, count x element size), arrays of strings
/// their strings, arrays of arrays their values, so no value costs much more memory than its bytes.
struct Value {
  ValueType type = ValueType::UINT8;
  uint64_t u = 0;  ///< UINT8/16/32/64, BOOL
  int64_t i = 0;   ///< INT8/16/32/64
  double f = 0;    ///< FLOAT32/64
  std::string str;
  // ARRAY
  ValueType elem_type = ValueType::UINT8;
  uint64_t count = 0;
  std::vector<uint8_t> raw;
  std::vector<std::string> strings;
  std::vector<Value> arrays;

  bool is_integer() const;
  bool is_float() const { return type == ValueType::FLOAT32 || type == ValueType::FLOAT64; }
  /// Element `k` of a numeric or bool array, widened (throws FormatError when not such an array).
  int64_t int_at(uint64_t k) const;
  double float_at(uint64_t k) const;
};

/// ggml tensor types (ggml_type) with a known block layout.
enum class TensorType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
};

/// Block geometry of a type: elements per block and bytes per block.
struct TypeTraits {
  const char* name = nullptr;
  uint64_t block_size = 0;
  uint64_t type_size = 0;
};

/// The traits of ggml type id `t`; block_size 0 when the id is unknown.
TypeTraits type_traits(uint32_t t);
/// "Q4_K", ...; "type <n>" for an unknown id.
std::string type_name(uint32_t t);
/// True for the types dequantize() implements.
bool can_dequantize(uint32_t t);

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  ///< ggml order: ne[0] fastest
  uint32_t type = 0;
  uint64_t offset = 0;  ///< relative to the data section
  uint64_t nbytes = 0;
  uint64_t numel = 0;
};

struct File {
  uint32_t version = 0;
  uint64_t alignment = 32;
  std::map<std::string, Value> metadata;
  std::vector<std::string> keys;               ///< metadata keys in file order
  std::vector<TensorInfo> tensors;             ///< file order
  std::map<std::string, size_t> tensor_index;  ///< name -> position in tensors
  uint64_t data_start = 0;                     ///< file offset of the data section
};

/// Parses and validates the header of a GGUF file held in memory (`size` bytes, e.g. a memory
/// map): magic, version 2 or 3, every count and length against the bytes left, value types, array
/// depth, unique keys and names, general.alignment (a power of two), tensor dims and byte sizes
/// without overflow, block divisibility, offsets aligned, in bounds and non-overlapping. Reads no
/// tensor byte. Throws FormatError.
File parse(const uint8_t* data, size_t size);

/// Dequantizes `numel` elements of type `type` (a multiple of its block size) from `src` (exactly
/// numel / block_size * type_size bytes) into `dst`, computing as the gguf Python package does
/// (bit for bit). Throws FormatError for a type not in can_dequantize(), naming it.
void dequantize(uint32_t type, const uint8_t* src, uint64_t numel, float* dst);

}  // namespace edkm::io::gguf
EDKM_INTERNAL_END
