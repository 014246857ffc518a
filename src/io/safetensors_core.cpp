#include "io/safetensors_core.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

// Every check happens on the parsed header and the file size before any tensor byte is read;
// arithmetic on untrusted numbers is overflow-checked.

namespace edkm::io {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& what) { throw FormatError(what); }

uint64_t checked_mul(uint64_t a, uint64_t b, const std::string& what) {
  uint64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) fail(what + " overflows 64 bits");
  return r;
}

// The header is two levels deep (tensor -> shape); anything deeper is rejected while parsing, so
// a hostile "[[[[..." never builds a deep value.
// A key twice in one object is refused, as the safetensors package does (nlohmann keeps the last).
json parse_json(const char* text, size_t n, const std::string& what, int max_depth) {
  std::vector<std::set<std::string>> keys;  // of the objects being parsed, innermost last
  json::parser_callback_t limit = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > max_depth) fail(what + " is nested deeper than " + std::to_string(max_depth) + " levels");
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == json::parse_event_t::key && !keys.empty()) {
      const auto key = parsed.get<std::string>();
      if (!keys.back().insert(key).second) fail(what + " has the key \"" + key + "\" twice");
    }
    return true;
  };
  try {
    return json::parse(text, text + n, limit);
  } catch (const json::exception& e) {
    fail(what + " is not valid JSON (" + e.what() + ")");
  }
}

uint64_t as_u64(const json& v, const std::string& what) {
  if (!v.is_number_unsigned()) fail(what + " must be a non-negative integer, got " + v.dump());
  return v.get<uint64_t>();
}

std::vector<uint64_t> as_shape(const json& v, const std::string& what) {
  if (!v.is_array()) fail(what + " must be an array of non-negative integers");
  std::vector<uint64_t> shape;
  for (const auto& d : v) {
    shape.push_back(as_u64(d, what + " entry"));
    // A zero elsewhere keeps the product in range, but a tensor dimension is an int64.
    if (shape.back() > (uint64_t{1} << 62)) fail(what + " entry " + d.dump() + " is out of range");
  }
  return shape;
}

uint64_t product(const std::vector<uint64_t>& shape, const std::string& what) {
  uint64_t n = 1;
  for (auto d : shape) n = checked_mul(n, d, what);
  return n;
}

std::string shape_str(const std::vector<uint64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

TensorEntry parse_entry(const std::string& name, const json& v, uint64_t buffer_bytes) {
  const std::string what = "tensor '" + name + "'";
  if (!v.is_object()) fail(what + ": entry must be a JSON object");
  for (const auto& [key, _] : v.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") fail(what + ": unknown field '" + key + "'");
  }
  if (!v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets")) {
    fail(what + ": entry needs dtype, shape and data_offsets");
  }
  TensorEntry e;
  if (!v["dtype"].is_string()) fail(what + ": dtype must be a string");
  e.dtype = v["dtype"].get<std::string>();
  const size_t esize = dtype_size(e.dtype);
  if (esize == 0) fail(what + ": unsupported dtype '" + e.dtype + "'");
  e.shape = as_shape(v["shape"], what + ": shape");
  const auto& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2) fail(what + ": data_offsets must be [begin, end]");
  e.begin = as_u64(off[0], what + ": data_offsets");
  e.end = as_u64(off[1], what + ": data_offsets");
  if (e.begin > e.end) {
    fail(what + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "] are reversed");
  }
  if (e.end > buffer_bytes) {
    fail(what + ": data_offsets end " + std::to_string(e.end) + " is past the " + std::to_string(buffer_bytes) +
         "-byte buffer");
  }
  const uint64_t expect = checked_mul(product(e.shape, what + ": shape"), esize, what + ": byte size");
  if (expect != e.nbytes()) {
    fail(what + ": shape " + shape_str(e.shape) + " of " + e.dtype + " needs " + std::to_string(expect) +
         " bytes but data_offsets span " + std::to_string(e.nbytes()));
  }
  return e;
}

}  // namespace

size_t dtype_size(const std::string& d) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"I64", 8},     {"U64", 8}, {"F64", 8}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

uint64_t TensorEntry::numel() const {
  uint64_t n = 1;
  for (auto d : shape) n *= d;  // validated: cannot overflow
  return n;
}

uint64_t parse_header_length(const uint8_t* p, uint64_t file_size) {
  if (file_size < 8) fail("file of " + std::to_string(file_size) + " bytes is too short for the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | p[i];
  if (n > kMaxHeaderBytes) {
    fail("header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (n > file_size - 8) {
    fail("header length " + std::to_string(n) + " is larger than the " + std::to_string(file_size - 8) +
         " bytes after the length prefix (truncated file?)");
  }
  if (n < 2) fail("header length " + std::to_string(n) + " is too short for a JSON object");
  return n;
}

Header parse_header(const char* text, size_t n, uint64_t file_size) {
  Header h;
  h.header_bytes = n;
  h.data_start = 8 + n;
  if (file_size < h.data_start) fail("file is shorter than its header");
  h.buffer_bytes = file_size - h.data_start;
  const json root = parse_json(text, n, "the header", 3);
  if (!root.is_object()) fail("the header must be a JSON object");
  for (const auto& [name, v] : root.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail("__metadata__ must be an object of strings");
      for (const auto& [k, s] : v.items()) {
        if (!s.is_string()) fail("__metadata__ entry '" + k + "' must be a string");
        h.metadata[k] = s.get<std::string>();
      }
      continue;
    }
    if (name.empty()) fail("a tensor has an empty name");
    h.tensors[name] = parse_entry(name, v, h.buffer_bytes);
  }
  // The entries must tile the buffer: sorted by offset, each starts where the previous ended.
  std::vector<std::pair<const std::string*, const TensorEntry*>> order;
  for (const auto& [name, e] : h.tensors) order.emplace_back(&name, &e);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::tie(a.second->begin, a.second->end) < std::tie(b.second->begin, b.second->end);
  });
  uint64_t at = 0;
  for (const auto& [name, e] : order) {
    if (e->begin < at) fail("tensor '" + *name + "' overlaps the previous tensor at byte " + std::to_string(e->begin));
    if (e->begin > at) {
      fail("bytes " + std::to_string(at) + ".." + std::to_string(e->begin) + " of the buffer belong to no tensor");
    }
    at = e->end;
  }
  if (at != h.buffer_bytes) {
    fail("the tensors cover " + std::to_string(at) + " of the " + std::to_string(h.buffer_bytes) + " buffer bytes");
  }
  return h;
}

Header parse_file(const uint8_t* data, size_t size) {
  const uint64_t n = parse_header_length(data, size);
  return parse_header(reinterpret_cast<const char*>(data) + 8, n, size);
}

std::string serialize_header(const std::vector<TensorBytes>& tensors,
                             const std::map<std::string, std::string>& metadata) {
  json root = json::object();
  if (!metadata.empty()) root["__metadata__"] = metadata;
  uint64_t at = 0;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") fail("invalid tensor name '" + t.name + "'");
    if (root.contains(t.name)) fail("tensor '" + t.name + "' is written twice");
    const size_t esize = dtype_size(t.dtype);
    if (esize == 0) fail("tensor '" + t.name + "': unsupported dtype '" + t.dtype + "'");
    if (checked_mul(product(t.shape, "shape"), esize, "byte size") != t.nbytes) {
      fail("tensor '" + t.name + "': shape " + shape_str(t.shape) + " does not match its " + std::to_string(t.nbytes) +
           " bytes");
    }
    root[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {at, at + t.nbytes}}};
    at += t.nbytes;
  }
  std::string s = root.dump();
  s.append((8 - s.size() % 8) % 8, ' ');  // the buffer starts 8-byte aligned
  return s;
}

namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void write_all(int fd, const void* data, uint64_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<uint64_t>(n, uint64_t{1} << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("writing " + path + " failed: " + std::strerror(errno));
    p += w;
    n -= static_cast<uint64_t>(w);
  }
}

}  // namespace

namespace {

// Removes the temporaries `<name>.tmp.<pid>.<n>` in `dir` that a write of `name` killed before
// its rename left behind (the process is gone); a live writer's are kept.
void remove_stale_temporaries(const std::string& dir, const std::string& name) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  const std::string prefix = name + ".tmp.";
  while (const dirent* e = ::readdir(d)) {
    const std::string entry = e->d_name;
    if (entry.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string rest = entry.substr(prefix.size());  // <pid>.<n>
    const auto dot = rest.find('.');
    if (dot == std::string::npos || dot == 0 || rest.find_first_not_of("0123456789.") != std::string::npos) continue;
    const long pid = std::strtol(rest.substr(0, dot).c_str(), nullptr, 10);
    if (pid <= 0 || pid == ::getpid() || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    ::unlink((dir + "/" + entry).c_str());
  }
  ::closedir(d);
}

// Runs `body(fd, tmp)` on a new temporary file next to `path`, then fsync, rename, fsync of the
// directory. On failure the destination is untouched and the temporary removed. A symlink is
// written through (its target is replaced, the link kept), and an existing file keeps its
// permission bits.
template <class Body>
void write_atomic(const std::string& requested, Body&& body) {
  std::string path = requested;
  struct stat link {};
  if (::lstat(requested.c_str(), &link) == 0 && S_ISLNK(link.st_mode)) {
    if (char* real = ::realpath(requested.c_str(), nullptr)) {
      path = real;
      std::free(real);
    }
  }
  struct stat old {};
  const bool existed = ::stat(path.c_str(), &old) == 0;
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  remove_stale_temporaries(dir, slash == std::string::npos ? path : path.substr(slash + 1));
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  try {
    Fd f;
    f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (f.fd < 0) fail("cannot create " + tmp + ": " + std::strerror(errno));
    if (existed && S_ISREG(old.st_mode)) ::fchmod(f.fd, old.st_mode & 07777);
    body(f.fd, tmp);
    if (::fsync(f.fd) != 0) fail("fsync of " + tmp + " failed: " + std::strerror(errno));
    if (::close(f.fd) != 0) {
      f.fd = -1;
      fail("closing " + tmp + " failed: " + std::strerror(errno));
    }
    f.fd = -1;
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      fail("renaming " + tmp + " to " + path + " failed: " + std::strerror(errno));
    }
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  Fd d;
  d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d.fd >= 0) ::fsync(d.fd);  // the rename is durable once the directory is
}

}  // namespace

void write_file(const std::string& path, const std::vector<TensorBytes>& tensors,
                const std::map<std::string, std::string>& metadata) {
  const std::string header = serialize_header(tensors, metadata);
  write_atomic(path, [&](int fd, const std::string& tmp) {
    uint8_t len[8];
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    write_all(fd, len, 8, tmp);
    write_all(fd, header.data(), header.size(), tmp);
    for (const auto& t : tensors) write_all(fd, t.data, t.nbytes, tmp);
  });
}

void write_bytes(const std::string& path, const void* data, uint64_t nbytes) {
  write_atomic(path, [&](int fd, const std::string& tmp) { write_all(fd, data, nbytes, tmp); });
}

uint64_t packed_bytes(uint64_t count, int bits) {
  return count / 8 * static_cast<uint64_t>(bits) + (count % 8 * static_cast<uint64_t>(bits) + 7) / 8;
}

// Both directions take 8 indices at a time where they can: 8 indices of `bits` bits are exactly
// `bits` bytes, starting on a byte, assembled in (or read from) one 64-bit word; the rest one by one.
void pack_indices(const uint8_t* idx, uint64_t count, int bits, uint8_t* out) {
  if (bits < 1 || bits > 8) fail("bits must be in 1..8, got " + std::to_string(bits));
  const uint32_t limit = 1u << bits;
  std::memset(out, 0, packed_bytes(count, bits));
  const uint64_t groups = count / 8;
  for (uint64_t g = 0; g < groups; ++g) {
    const uint8_t* in = idx + 8 * g;
    uint64_t v = 0;
    uint32_t any = 0;  // the OR of the 8: a bit at or above `bits` means one does not fit
    for (int j = 0; j < 8; ++j) {
      any |= in[j];
      v |= static_cast<uint64_t>(in[j]) << (j * bits);
    }
    if (any >= limit)
      for (int j = 0; j < 8; ++j)
        if (in[j] >= limit)
          fail("index " + std::to_string(in[j]) + " does not fit in " + std::to_string(bits) + " bits");
    uint8_t* o = out + g * static_cast<uint64_t>(bits);
    for (int b = 0; b < bits; ++b) o[b] = static_cast<uint8_t>(v >> (8 * b));
  }
  uint64_t bit = groups * 8 * static_cast<uint64_t>(bits);
  for (uint64_t i = groups * 8; i < count; ++i, bit += static_cast<uint64_t>(bits)) {
    const uint32_t v = idx[i];
    if (v >= limit) fail("index " + std::to_string(v) + " does not fit in " + std::to_string(bits) + " bits");
    const uint64_t byte = bit >> 3;
    const uint32_t shifted = v << (bit & 7);
    out[byte] |= static_cast<uint8_t>(shifted);
    if ((bit & 7) + static_cast<uint64_t>(bits) > 8) out[byte + 1] |= static_cast<uint8_t>(shifted >> 8);
  }
}

void unpack_indices(const uint8_t* packed, uint64_t packed_size, uint64_t count, int bits, uint8_t* out) {
  if (bits < 1 || bits > 8) fail("bits must be in 1..8, got " + std::to_string(bits));
  if (packed_size != packed_bytes(count, bits)) {
    fail(std::to_string(count) + " indices of " + std::to_string(bits) + " bits need " +
         std::to_string(packed_bytes(count, bits)) + " bytes, got " + std::to_string(packed_size));
  }
  const uint32_t mask = (1u << bits) - 1;
  const uint64_t groups = count / 8;
  for (uint64_t g = 0; g < groups; ++g) {
    const uint8_t* p = packed + g * static_cast<uint64_t>(bits);
    uint64_t v = 0;
    for (int b = 0; b < bits; ++b) v |= static_cast<uint64_t>(p[b]) << (8 * b);
    for (int j = 0; j < 8; ++j) out[8 * g + j] = static_cast<uint8_t>((v >> (j * bits)) & mask);
  }
  uint64_t bit = groups * 8 * static_cast<uint64_t>(bits);
  for (uint64_t i = groups * 8; i < count; ++i, bit += static_cast<uint64_t>(bits)) {
    const uint64_t byte = bit >> 3;
    uint32_t v = packed[byte];
    if ((bit & 7) + static_cast<uint64_t>(bits) > 8) v |= static_cast<uint32_t>(packed[byte + 1]) << 8;
    out[i] = static_cast<uint8_t>((v >> (bit & 7)) & mask);
  }
  const uint64_t used = count * static_cast<uint64_t>(bits) % 8;
  if (used != 0 && (packed[packed_size - 1] >> used) != 0) fail("the padding bits after the last index are not zero");
}

// --- palettes ----------------------------------------------------------------------------------

uint64_t PaletteEntry::numel() const {
  uint64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string palette_metadata(const PaletteEntry& p) {
  return json{{"shape", p.shape},
              {"dtype", p.dtype},
              {"bits", p.bits},
              {"granularity", p.granularity},
              {"group_size", p.group_size},
              {"cluster_dim", p.cluster_dim},
              {"scale", p.scale}}
      .dump();
}

namespace {

PaletteEntry parse_palette(const std::string& name, const std::string& text, const Header& h) {
  const std::string what = "palette '" + name + "'";
  const json v = parse_json(text.data(), text.size(), what + " metadata", 2);
  if (!v.is_object()) fail(what + ": metadata must be a JSON object");
  for (const char* key : {"shape", "dtype", "bits", "granularity", "group_size", "cluster_dim", "scale"}) {
    if (!v.contains(key)) fail(what + ": metadata lacks '" + key + "'");
  }
  PaletteEntry p;
  p.shape = as_shape(v["shape"], what + ": shape");
  if (p.shape.empty()) fail(what + ": shape must have at least one dimension");
  if (!v["dtype"].is_string()) fail(what + ": dtype must be a string");
  p.dtype = v["dtype"].get<std::string>();
  if (p.dtype != "F32" && p.dtype != "F64" && p.dtype != "F16" && p.dtype != "BF16") {
    fail(what + ": dtype must be F32, F64, F16 or BF16, got '" + p.dtype + "'");
  }
  const uint64_t bits = as_u64(v["bits"], what + ": bits");
  if (bits < 1 || bits > 8) fail(what + ": bits must be in 1..8, got " + std::to_string(bits));
  p.bits = static_cast<int>(bits);
  if (!v["granularity"].is_string()) fail(what + ": granularity must be a string");
  p.granularity = v["granularity"].get<std::string>();
  p.group_size = as_u64(v["group_size"], what + ": group_size");
  p.cluster_dim = as_u64(v["cluster_dim"], what + ": cluster_dim");
  if (!v["scale"].is_boolean()) fail(what + ": scale must be true or false");
  p.scale = v["scale"].get<bool>();

  const uint64_t n = product(p.shape, what + ": shape");
  const uint64_t rows = p.shape[0];
  if (n == 0) fail(what + ": the weight is empty");
  if (p.granularity == "per_tensor") {
    p.groups = 1;
  } else if (p.granularity == "per_grouped_channel") {
    if (p.group_size == 0 || rows % p.group_size != 0) {
      fail(what + ": group_size " + std::to_string(p.group_size) + " does not divide the " + std::to_string(rows) +
           " rows");
    }
    p.groups = rows / p.group_size;
  } else {
    fail(what + ": unknown granularity '" + p.granularity + "'");
  }
  if (p.cluster_dim == 0 || (n / p.groups) % p.cluster_dim != 0) {
    fail(what + ": cluster_dim " + std::to_string(p.cluster_dim) + " does not divide the elements of a group");
  }
  p.vectors = n / p.groups / p.cluster_dim;

  auto tensor = [&](const std::string& suffix) -> const TensorEntry& {
    auto it = h.tensors.find(name + suffix);
    if (it == h.tensors.end()) fail(what + ": tensor '" + name + suffix + "' is missing");
    return it->second;
  };
  const auto& lut = tensor(".lut");
  const std::vector<uint64_t> lut_shape{p.groups, uint64_t{1} << p.bits, p.cluster_dim};
  if (lut.dtype != p.dtype || lut.shape != lut_shape) {
    fail(what + ": LUT is " + lut.dtype + " " + shape_str(lut.shape) + ", expected " + p.dtype + " " +
         shape_str(lut_shape));
  }
  const auto& idx = tensor(".indices");
  const uint64_t count = p.groups * p.vectors;
  const uint64_t need = packed_bytes(count, p.bits);
  if (idx.dtype != "U8" || idx.shape.size() != 1 || idx.nbytes() != need) {
    fail(what + ": indices are " + idx.dtype + " " + shape_str(idx.shape) + " (" + std::to_string(idx.nbytes()) +
         " bytes) but " + std::to_string(count) + " indices of " + std::to_string(p.bits) + " bits need U8 [" +
         std::to_string(need) + "]");
  }
  const bool has_scale = h.tensors.count(name + ".scale") > 0;
  if (p.scale) {
    const auto& s = tensor(".scale");
    if (s.dtype != "F32" || s.shape != std::vector<uint64_t>{rows, 1}) {
      fail(what + ": scale is " + s.dtype + " " + shape_str(s.shape) + ", expected F32 [" + std::to_string(rows) +
           ", 1]");
    }
  } else if (has_scale) {
    fail(what + ": tensor '" + name + ".scale' is present but the metadata says no scale");
  }
  if (h.tensors.count(name)) fail(what + ": a plain tensor of the same name is also stored");
  return p;
}

}  // namespace

std::map<std::string, PaletteEntry> parse_palettes(const Header& h) {
  std::map<std::string, PaletteEntry> out;
  const std::string prefix = kPaletteKeyPrefix;
  for (const auto& [key, value] : h.metadata) {
    if (key.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string name = key.substr(prefix.size());
    if (name.empty()) fail("a palette metadata entry has an empty name");
    out[name] = parse_palette(name, value, h);
  }
  return out;
}

}  // namespace edkm::io
