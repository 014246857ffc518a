#pragma once
// Process-wide bytes reserved by every HostMemoryPool (pinned or not), for MemoryMeter.
#include <cstdint>

namespace edkm::detail {
int64_t host_pools_reserved_bytes();
int64_t host_pools_peak_reserved_bytes();
void reset_host_pools_peak();
}  // namespace edkm::detail
