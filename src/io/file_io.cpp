#include "edkm/io/file_io.h"

#include <c10/util/Exception.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "io/safetensors_core.h"

namespace edkm {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "cannot open ", path);
  std::ostringstream s;
  s << in.rdbuf();
  TORCH_CHECK(!in.bad(), "reading ", path, " failed");
  return s.str();
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_directories(const std::string& dir) {
  for (size_t at = 1; at <= dir.size(); ++at) {
    if (at < dir.size() && dir[at] != '/') continue;
    const std::string part = dir.substr(0, at);
    if (is_directory(part)) continue;
    TORCH_CHECK(::mkdir(part.c_str(), 0755) == 0 || errno == EEXIST, "cannot create directory ", part, ": ",
                std::strerror(errno));
  }
}

void write_text_file(const std::string& path, const std::string& content) {
  try {
    io::write_bytes(path, content.data(), content.size());
  } catch (const io::FormatError& e) {
    TORCH_CHECK(false, e.what());
  }
}

}  // namespace edkm
