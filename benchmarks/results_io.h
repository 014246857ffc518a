#pragma once
// Torch-free helpers of the benchmark programs: lists, atomic result files, process memory
// figures, the machine's name.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace edkm::bench {

/// "a,b,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split(const std::string& text, char sep = ',') {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  for (std::string s; std::getline(ss, s, sep);) parts.push_back(s);
  return parts;
}

/// Writes `content` to `path` atomically: a temporary file in the same folder, fsync, rename.
inline void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + tmp);
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n <= 0) {
      ::close(fd);
      throw std::runtime_error("write failed: " + tmp);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) throw std::runtime_error("fsync/close failed: " + tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

/// A field of /proc/self/status in bytes ("VmRSS", "VmHWM"); -1 where /proc is unavailable.
inline int64_t proc_status_bytes(const std::string& field) {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.compare(0, field.size() + 1, field + ":") == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  return -1;
}

/// The machine's name in results, from EDKM_BENCH_MACHINE or the default of this project's CI box.
inline std::string machine_name() {
  const char* m = std::getenv("EDKM_BENCH_MACHINE");
  return m && *m ? m : "2-core x86-64 CPU, 24 GiB, no GPU";
}

}  // namespace edkm::bench
