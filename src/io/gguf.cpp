#include "edkm/io/gguf.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "io/gguf_core.h"

namespace edkm {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF data is little-endian");

namespace detail {

// The read-only mapping of the whole file and its parsed header.
struct GgufState {
  std::string path;
  const uint8_t* data = nullptr;
  size_t size = 0;
  io::gguf::File file;

  ~GgufState() {
    if (data != nullptr && size > 0) ::munmap(const_cast<uint8_t*>(data), size);
  }

  const io::gguf::Value& value(const std::string& key) const {
    auto it = file.metadata.find(key);
    TORCH_CHECK(it != file.metadata.end(), "edkm: ", path, ": metadata '", key, "' is missing");
    return it->second;
  }
  [[noreturn]] void wrong_type(const std::string& key, const char* expected) const {
    TORCH_CHECK(false, "edkm: ", path, ": metadata '", key, "' is ", type_of(value(key)), ", expected ", expected);
  }
  static std::string type_of(const io::gguf::Value& v) {
    if (v.type != io::gguf::ValueType::ARRAY) return io::gguf::value_type_name(v.type);
    return "ARRAY[" + io::gguf::value_type_name(v.elem_type) + "]";
  }
  const io::gguf::TensorInfo& tensor(const std::string& name) const {
    auto it = file.tensor_index.find(name);
    TORCH_CHECK(it != file.tensor_index.end(), "edkm: ", path, " has no tensor '", name, "'");
    return file.tensors[it->second];
  }
};

}  // namespace detail

namespace {

using io::gguf::Value;
using io::gguf::ValueType;

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

GgufFile::GgufFile(const std::string& path) {
  auto state = std::make_shared<detail::GgufState>();
  state->path = path;
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TORCH_CHECK(f.fd >= 0, "edkm: cannot open ", path, ": ", std::strerror(errno));
  struct stat st {};
  TORCH_CHECK(::fstat(f.fd, &st) == 0, "edkm: cannot stat ", path, ": ", std::strerror(errno));
  TORCH_CHECK(S_ISREG(st.st_mode), "edkm: ", path, " is not a regular file");
  state->size = static_cast<size_t>(st.st_size);
  if (state->size > 0) {
    void* p = ::mmap(nullptr, state->size, PROT_READ, MAP_PRIVATE, f.fd, 0);
    TORCH_CHECK(p != MAP_FAILED, "edkm: cannot map ", path, ": ", std::strerror(errno));
    state->data = static_cast<const uint8_t*>(p);
  }
  static const uint8_t kEmpty = 0;
  try {
    state->file = io::gguf::parse(state->data ? state->data : &kEmpty, state->size);
  } catch (const io::FormatError& e) {
    TORCH_CHECK(false, "edkm: ", path, " is not a valid GGUF file: ", e.what());
  }
  state_ = std::move(state);
}

const std::string& GgufFile::path() const { return state_->path; }
uint32_t GgufFile::version() const { return state_->file.version; }
int64_t GgufFile::alignment() const { return static_cast<int64_t>(state_->file.alignment); }

std::vector<std::string> GgufFile::keys() const { return state_->file.keys; }
bool GgufFile::has(const std::string& key) const { return state_->file.metadata.count(key) > 0; }
std::string GgufFile::value_type(const std::string& key) const {
  return detail::GgufState::type_of(state_->value(key));
}

std::string GgufFile::get_string(const std::string& key) const {
  const Value& v = state_->value(key);
  if (v.type != ValueType::STRING) state_->wrong_type(key, "STRING");
  return v.str;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const Value& v = state_->value(key);
  if (!v.is_integer()) state_->wrong_type(key, "an integer");
  if (v.type == ValueType::INT8 || v.type == ValueType::INT16 || v.type == ValueType::INT32 ||
      v.type == ValueType::INT64) {
    return v.i;
  }
  TORCH_CHECK(v.u <= static_cast<uint64_t>(INT64_MAX), "edkm: ", path(), ": metadata '", key, "' = ", v.u,
              " does not fit int64");
  return static_cast<int64_t>(v.u);
}

double GgufFile::get_float(const std::string& key) const {
  const Value& v = state_->value(key);
  if (v.is_float()) return v.f;
  if (v.is_integer()) return static_cast<double>(get_int(key));
  state_->wrong_type(key, "a number");
}

bool GgufFile::get_bool(const std::string& key) const {
  const Value& v = state_->value(key);
  if (v.type != ValueType::BOOL) state_->wrong_type(key, "BOOL");
  return v.u != 0;
}

int64_t GgufFile::array_length(const std::string& key) const {
  const Value& v = state_->value(key);
  if (v.type != ValueType::ARRAY) state_->wrong_type(key, "an ARRAY");
  return static_cast<int64_t>(v.count);
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const Value& v = state_->value(key);
  if (v.type != ValueType::ARRAY || v.elem_type != ValueType::STRING) state_->wrong_type(key, "ARRAY[STRING]");
  return v.strings;
}

namespace {

// Every element of the numeric array `key`, read by `at` (Value::int_at or float_at).
template <class T, class At>
std::vector<T> numbers(const detail::GgufState& s, const std::string& key, At at) {
  const Value& v = s.value(key);
  if (v.type != ValueType::ARRAY) s.wrong_type(key, "an ARRAY of numbers");
  std::vector<T> out;
  try {
    out.reserve(v.count);
    for (uint64_t k = 0; k < v.count; ++k) out.push_back((v.*at)(k));
  } catch (const io::FormatError& e) {
    TORCH_CHECK(false, "edkm: ", s.path, ": metadata '", key, "' (", detail::GgufState::type_of(v), "): ", e.what());
  }
  return out;
}

}  // namespace

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  return numbers<int64_t>(*state_, key, &Value::int_at);
}

std::vector<double> GgufFile::get_float_array(const std::string& key) const {
  return numbers<double>(*state_, key, &Value::float_at);
}

std::string GgufFile::get_string_or(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}
int64_t GgufFile::get_int_or(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}
double GgufFile::get_float_or(const std::string& key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}

namespace {

GgufTensorInfo info_of(const io::gguf::TensorInfo& t, uint64_t data_start) {
  GgufTensorInfo i;
  i.name = t.name;
  i.type = io::gguf::type_name(t.type);
  for (auto it = t.ne.rbegin(); it != t.ne.rend(); ++it) i.shape.push_back(static_cast<int64_t>(*it));
  i.nbytes = static_cast<int64_t>(t.nbytes);
  i.offset = static_cast<int64_t>(data_start + t.offset);
  return i;
}

}  // namespace

std::vector<GgufTensorInfo> GgufFile::tensors() const {
  std::vector<GgufTensorInfo> out;
  for (const auto& t : state_->file.tensors) out.push_back(info_of(t, state_->file.data_start));
  return out;
}

bool GgufFile::has_tensor(const std::string& name) const { return state_->file.tensor_index.count(name) > 0; }

GgufTensorInfo GgufFile::tensor_info(const std::string& name) const {
  return info_of(state_->tensor(name), state_->file.data_start);
}

at::Tensor GgufFile::tensor(const std::string& name, at::ScalarType dtype) const {
  const io::gguf::TensorInfo& t = state_->tensor(name);
  TORCH_CHECK(io::gguf::can_dequantize(t.type), "edkm: ", path(), ": tensor '", name, "' has type ",
              io::gguf::type_name(t.type),
              ", which edkm cannot dequantize (supported: F32, F16, BF16, Q4_0, Q4_1, "
              "Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)");
  const GgufTensorInfo info = info_of(t, state_->file.data_start);
  at::Tensor out = at::empty(info.shape, at::TensorOptions().dtype(at::kFloat));
  if (t.numel == 0) return out.to(dtype);
  // Rows (ne[0] elements each, whole blocks) are independent: dequantize them in parallel.
  const io::gguf::TypeTraits tr = io::gguf::type_traits(t.type);
  const uint64_t row = t.ne.empty() ? 1 : t.ne[0];
  const uint64_t rows = t.numel / row, row_bytes = row / tr.block_size * tr.type_size;
  const uint8_t* src = state_->data + state_->file.data_start + t.offset;
  float* dst = out.data_ptr<float>();
  const int64_t grain = static_cast<int64_t>(std::max<uint64_t>(1, (uint64_t{1} << 16) / row));
  at::parallel_for(0, static_cast<int64_t>(rows), grain, [&](int64_t b, int64_t e) {
    io::gguf::dequantize(t.type, src + static_cast<uint64_t>(b) * row_bytes, static_cast<uint64_t>(e - b) * row,
                         dst + static_cast<uint64_t>(b) * row);
  });
  return dtype == at::kFloat ? out : out.to(dtype);
}

bool is_gguf_file(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) return false;
  struct stat st {};
  if (::fstat(f.fd, &st) != 0 || !S_ISREG(st.st_mode)) return false;
  char magic[4] = {};
  return ::read(f.fd, magic, 4) == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

}  // namespace edkm
