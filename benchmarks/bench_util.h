#pragma once
// Helpers shared by the benchmark programs: argument parsing, device synchronisation, atomic
// result files, process memory figures.
#include <ATen/core/Tensor.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace edkm::bench {

/// "RxC" -> {R, C}.
inline std::vector<int64_t> parse_shape(const std::string& s) {
  auto x = s.find('x');
  if (x == std::string::npos) throw std::invalid_argument("shape must be RxC, got " + s);
  return {std::stoll(s.substr(0, x)), std::stoll(s.substr(x + 1))};
}

/// "a,b,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split(const std::string& text, char sep = ',') {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  for (std::string s; std::getline(ss, s, sep);) parts.push_back(s);
  return parts;
}

/// Waits for the device's queued work (no-op on the CPU).
inline void sync(const at::Device& d) {
#if defined(EDKM_WITH_CUDA)
  if (d.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)d;
#endif
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
