#pragma once
// Internals of the safetensors layer shared by safetensors.cpp and checkpoint.cpp (not installed).
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "edkm/export.h"
#include "io/safetensors_core.h"

EDKM_INTERNAL_BEGIN
namespace edkm::detail {

/// Writes tensors in the given order (atomically); errors as c10::Error.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata);

/// A validated safetensors file whose tensors are read on demand.
class OpenSafetensors {
 public:
  explicit OpenSafetensors(const std::string& path);
  const io::Header& header() const { return header_; }
  const std::string& path() const { return path_; }
  /// Reads tensor `name` into a new CPU tensor.
  at::Tensor read(const std::string& name) const;

 private:
  std::string path_;
  uint64_t size_ = 0;
  io::Header header_;
};

}  // namespace edkm::detail
EDKM_INTERNAL_END
