#pragma once
// safetensors files: a validating reader and an atomic writer (no Python, no Rust needed).
//
// Format: 8-byte little-endian header length N, N bytes of JSON header
//   {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<value>"}}
// then the byte buffer (row-major, little-endian). The files are those of the Python
// `safetensors` package and Hugging Face checkpoints.
#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "edkm/export.h"

namespace edkm {

/// The tensors (by name) and the `__metadata__` string map of a safetensors file.
///
/// Example:
///   edkm::SafetensorsFile f;
///   f.tensors["w"] = at::randn({4, 4});
///   f.metadata["note"] = "hello";
///   edkm::save_safetensors("w.safetensors", f);
///   auto back = edkm::load_safetensors("w.safetensors");  // back.tensors["w"] equals f.tensors["w"]
struct EDKM_API SafetensorsFile {
  std::map<std::string, at::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

/// Writes `file` to `path` atomically (temporary file in the same directory, fsync, rename).
/// Tensors may live on any device and be non-contiguous; they are written in name order.
/// Throws c10::Error on an unsupported dtype or an I/O failure.
EDKM_API void save_safetensors(const std::string& path, const SafetensorsFile& file);

/// Reads a safetensors file into CPU tensors. The header is validated (length against the file
/// size, JSON, dtypes, shape * dtype size == byte length, offsets in bounds, non-overlapping and
/// covering the buffer) before any tensor byte is read; a bad file throws c10::Error saying why.
EDKM_API SafetensorsFile load_safetensors(const std::string& path);

/// The safetensors name of a dtype ("F32", "BF16", "U8", ...); throws for dtypes it lacks.
EDKM_API std::string safetensors_dtype(at::ScalarType dtype);
/// The dtype of a safetensors name; throws for unknown names.
EDKM_API at::ScalarType scalar_type_of(const std::string& safetensors_dtype);

}  // namespace edkm
