#pragma once
// Process-wide bytes reserved by every HostMemoryPool (pinned or not), for MemoryMeter.
#include <cstdint>

#include "edkm/memory/host_pool.h"

namespace edkm::detail {

/// Internal access to a pool.
struct HostPoolAccess {
  /// Leaves the pool's bytes out of the process-wide count (the caching CPU allocator's pool:
  /// what it hands out is counted as CPU memory, MemoryReport::cpu). Call before any allocation.
  static void leave_out_of_host_pool_count(HostMemoryPool& pool);
};

int64_t host_pools_reserved_bytes();
int64_t host_pools_peak_reserved_bytes();
void reset_host_pools_peak();
}  // namespace edkm::detail
