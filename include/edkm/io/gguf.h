#pragma once
// GGUF files (llama.cpp's format), versions 2 and 3: metadata and tensors, dequantized to fp32 (or
// converted from fp32 to another dtype) on read. The file is memory-mapped: nothing is copied
// until a tensor is asked for, and only that tensor. The whole header is validated when the file
// is opened (magic, version, every count and length against the file size, array nesting, general.alignment,
// tensor dims, byte sizes, block divisibility, offsets aligned, in bounds and non-overlapping,
// duplicate keys and names) before any tensor byte is read; a malformed or hostile file throws
// c10::Error naming the file and the problem.
//
// Tensor types read: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
// (bit-exact with the gguf Python package's dequantization). Other types are listed and validated
// but reading them throws, naming the type.
//
// Shapes are PyTorch's: a tensor whose GGUF dims are ne = {cols, rows} is returned as [rows, cols].
//
// The mapping is private and read-only: the file must not be truncated while a GgufFile (or a copy)
// is alive (as with any memory map, reading a page past the new end would raise SIGBUS).
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "edkm/export.h"

namespace edkm {

namespace detail {
struct GgufState;
}

/// One tensor of a GGUF file.
struct EDKM_API GgufTensorInfo {
  std::string name;
  std::string type;            ///< ggml type name: "F32", "Q4_K", ...
  std::vector<int64_t> shape;  ///< PyTorch order (GGUF dims reversed)
  int64_t nbytes = 0;          ///< bytes in the file
  int64_t offset = 0;          ///< file offset of the first byte
};

/// A validated, memory-mapped GGUF file. Copies share the mapping.
///
/// Example:
///   edkm::GgufFile f("SmolLM2-135M-Instruct.Q4_1.gguf");
///   std::string arch = f.get_string("general.architecture");            // "llama"
///   int64_t layers = f.get_int("llama.block_count");                      // 30
///   std::vector<std::string> tokens = f.get_string_array("tokenizer.ggml.tokens");
///   at::Tensor w = f.tensor("blk.0.ffn_up.weight");                      // [1536, 576] fp32
class EDKM_API GgufFile {
 public:
  /// Maps and validates `path`; throws c10::Error naming the file and the problem.
  explicit GgufFile(const std::string& path);
  const std::string& path() const;
  /// 2 or 3.
  uint32_t version() const;
  /// general.alignment (default 32).
  int64_t alignment() const;

  // --- metadata --------------------------------------------------------------------------------
  /// Keys in file order.
  std::vector<std::string> keys() const;
  bool has(const std::string& key) const;
  /// "UINT32", "STRING", "ARRAY[STRING]", "ARRAY[ARRAY]", ...; throws when the key is missing.
  std::string value_type(const std::string& key) const;
  /// A STRING value.
  std::string get_string(const std::string& key) const;
  /// Any integer value (UINT8 ... INT64); throws when it does not fit int64.
  int64_t get_int(const std::string& key) const;
  /// A FLOAT32 / FLOAT64 value, or an integer one converted.
  double get_float(const std::string& key) const;
  /// A BOOL value.
  bool get_bool(const std::string& key) const;
  /// Elements of an array (throws when `key` is not an array).
  int64_t array_length(const std::string& key) const;
  /// An ARRAY of STRING (e.g. tokenizer.ggml.tokens, tokenizer.ggml.merges).
  std::vector<std::string> get_string_array(const std::string& key) const;
  /// An ARRAY of integers (e.g. tokenizer.ggml.token_type).
  std::vector<int64_t> get_int_array(const std::string& key) const;
  /// An ARRAY of floats or integers (e.g. tokenizer.ggml.scores).
  std::vector<double> get_float_array(const std::string& key) const;
  /// A string value of `key`, or `fallback` when absent (throws when present with another type).
  std::string get_string_or(const std::string& key, const std::string& fallback) const;
  int64_t get_int_or(const std::string& key, int64_t fallback) const;
  double get_float_or(const std::string& key, double fallback) const;

  // --- tensors ---------------------------------------------------------------------------------
  /// Every tensor, in file order.
  std::vector<GgufTensorInfo> tensors() const;
  bool has_tensor(const std::string& name) const;
  GgufTensorInfo tensor_info(const std::string& name) const;
  /// Tensor `name` dequantized to fp32 and converted to `dtype` (a new CPU tensor). Throws for a
  /// missing tensor or a type that cannot be dequantized (naming it).
  at::Tensor tensor(const std::string& name, at::ScalarType dtype = at::kFloat) const;

 private:
  std::shared_ptr<const detail::GgufState> state_;
};

/// Whether `path` starts with the GGUF magic (false for directories and unreadable files).
EDKM_API bool is_gguf_file(const std::string& path);

}  // namespace edkm
