#pragma once
// Byte sizes in the library's human-readable reports (stats' to_string, the Palettizer's table),
// written once, through fmt.
#include <fmt/format.h>

#include <cstdint>
#include <string>

namespace edkm::detail {

/// Bytes as MiB with one decimal: "12.3".
inline std::string mib_value(int64_t bytes) { return fmt::format("{:.1f}", static_cast<double>(bytes) / (1 << 20)); }
/// Bytes as "12.3 MiB".
inline std::string mib(int64_t bytes) { return mib_value(bytes) + " MiB"; }
/// Bytes as "512.0 KiB" below 1 MiB, else "1.25 MiB".
inline std::string human_bytes(int64_t bytes) {
  return bytes >= (1 << 20) ? fmt::format("{:.2f} MiB", static_cast<double>(bytes) / (1 << 20))
                            : fmt::format("{:.1f} KiB", static_cast<double>(bytes) / 1024);
}

}  // namespace edkm::detail
