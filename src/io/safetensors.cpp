#include "edkm/io/safetensors.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <fstream>
#include <vector>

#include "io/safetensors_core.h"
#include "io/torch_io.h"

namespace edkm {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; big-endian hosts would "
              "need byte swapping");

namespace {
const std::vector<std::pair<at::ScalarType, const char*>>& dtype_names() {
  static const std::vector<std::pair<at::ScalarType, const char*>> names = {{at::kBool, "BOOL"},
                                                                            {at::kByte, "U8"},
                                                                            {at::kChar, "I8"},
                                                                            {at::kShort, "I16"},
                                                                            {at::kUInt16, "U16"},
                                                                            {at::kHalf, "F16"},
                                                                            {at::kBFloat16, "BF16"},
                                                                            {at::kInt, "I32"},
                                                                            {at::kUInt32, "U32"},
                                                                            {at::kFloat, "F32"},
                                                                            {at::kLong, "I64"},
                                                                            {at::kUInt64, "U64"},
                                                                            {at::kDouble, "F64"},
                                                                            {at::kFloat8_e4m3fn, "F8_E4M3"},
                                                                            {at::kFloat8_e5m2, "F8_E5M2"}};
  return names;
}
}  // namespace

std::string safetensors_dtype(at::ScalarType dtype) {
  for (const auto& [t, n] : dtype_names()) {
    if (t == dtype) return n;
  }
  TORCH_CHECK(false, "edkm: safetensors has no dtype for ", dtype);
}

at::ScalarType scalar_type_of(const std::string& name) {
  for (const auto& [t, n] : dtype_names()) {
    if (name == n) return t;
  }
  TORCH_CHECK(false, "edkm: unknown safetensors dtype '", name, "'");
}

namespace detail {

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> keep;  // CPU contiguous copies alive while writing
  std::vector<io::TensorBytes> out;
  keep.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(t.defined(), "edkm: tensor '", name, "' to save is undefined");
    keep.push_back(t.detach().cpu().contiguous());
    const auto& c = keep.back();
    io::TensorBytes b;
    b.name = name;
    b.dtype = safetensors_dtype(c.scalar_type());
    for (auto s : c.sizes()) b.shape.push_back(static_cast<uint64_t>(s));
    b.data = c.data_ptr();
    b.nbytes = c.nbytes();
    out.push_back(std::move(b));
  }
  try {
    io::write_file(path, out, metadata);
  } catch (const io::FormatError& e) {
    TORCH_CHECK(false, "edkm: cannot write ", path, ": ", e.what());
  }
}

OpenSafetensors::OpenSafetensors(const std::string& path) : path_(path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  TORCH_CHECK(f, "edkm: cannot open ", path);
  const auto end = f.tellg();
  TORCH_CHECK(end >= 0, "edkm: cannot read the size of ", path);
  size_ = static_cast<uint64_t>(end);
  f.seekg(0);
  try {
    uint8_t prefix[8] = {};
    if (size_ >= 8) f.read(reinterpret_cast<char*>(prefix), 8);
    TORCH_CHECK(f, "edkm: reading ", path, " failed");
    const uint64_t n = io::parse_header_length(prefix, size_);
    std::string json(n, '\0');
    f.read(json.data(), static_cast<std::streamsize>(n));
    TORCH_CHECK(f, "edkm: reading the header of ", path, " failed");
    header_ = io::parse_header(json.data(), n, size_);
  } catch (const io::FormatError& e) {
    TORCH_CHECK(false, "edkm: ", path, " is not a valid safetensors file: ", e.what());
  }
}

at::Tensor OpenSafetensors::read(const std::string& name) const {
  auto it = header_.tensors.find(name);
  TORCH_CHECK(it != header_.tensors.end(), "edkm: ", path_, " has no tensor '", name, "'");
  const auto& e = it->second;
  std::vector<int64_t> shape(e.shape.begin(), e.shape.end());
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(scalar_type_of(e.dtype)));
  TORCH_CHECK(t.nbytes() == e.nbytes(), "edkm: internal size mismatch reading '", name, "'");
  if (e.nbytes() == 0) return t;
  std::ifstream f(path_, std::ios::binary);
  TORCH_CHECK(f, "edkm: cannot open ", path_);
  f.seekg(static_cast<std::streamoff>(header_.data_start + e.begin));
  f.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e.nbytes()));
  TORCH_CHECK(f, "edkm: reading tensor '", name, "' of ", path_, " failed (file changed while reading?)");
  return t;
}

}  // namespace detail

void save_safetensors(const std::string& path, const SafetensorsFile& file) {
  std::vector<std::pair<std::string, at::Tensor>> tensors(file.tensors.begin(), file.tensors.end());
  detail::write_safetensors(path, tensors, file.metadata);
}

SafetensorsFile load_safetensors(const std::string& path) {
  detail::OpenSafetensors f(path);
  SafetensorsFile out;
  out.metadata = f.header().metadata;
  for (const auto& [name, e] : f.header().tensors) out.tensors[name] = f.read(name);
  return out;
}

}  // namespace edkm
