#pragma once
// Torch-free helpers of the benchmark programs: lists, process memory figures, the machine's
// name. Result files are written with edkm::write_text_file (edkm/io/file_io.h: atomic).
#include <edkm/io/file_io.h>
#include <fmt/format.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace edkm::bench {

/// `v` with `digits` decimals: "3.142".
inline std::string fixed(double v, int digits) { return fmt::format("{:.{}f}", v, digits); }
/// Bytes as MiB with `digits` decimals, the number only (table cells): "12.3".
inline std::string mib(double bytes, int digits = 1) { return fixed(bytes / (1 << 20), digits); }

/// "a,b,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split(const std::string& text, char sep = ',') {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  for (std::string s; std::getline(ss, s, sep);) parts.push_back(s);
  return parts;
}

/// A field of /proc/self/status in bytes ("VmRSS", "VmHWM"); -1 where /proc is unavailable.
inline int64_t proc_status_bytes(const std::string& field) {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.compare(0, field.size() + 1, field + ":") == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  return -1;
}

/// Creates the folder the result path `out` (with or without its extension) is written in, at the
/// start of a run rather than failing at its end; says which folder when it cannot.
inline void make_out_dir(const std::string& out) {
  const auto slash = out.rfind('/');
  if (slash != std::string::npos && slash > 0) edkm::make_directories(out.substr(0, slash));
}

/// The machine's name in results, from EDKM_BENCH_MACHINE or the default of this project's CI box.
inline std::string machine_name() {
  const char* m = std::getenv("EDKM_BENCH_MACHINE");
  return m && *m ? m : "2-core x86-64 CPU, 24 GiB, no GPU";
}

}  // namespace edkm::bench
