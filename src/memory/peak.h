#pragma once
// Lock-free current / peak byte counters, shared by the memory meter, the host pools and the
// offloaders' statistics.
#include <atomic>
#include <cstdint>

namespace edkm::detail {

/// peak = max(peak, value), atomically.
inline void raise_peak(std::atomic<int64_t>& peak, int64_t value) {
  int64_t p = peak.load(std::memory_order_relaxed);
  while (value > p && !peak.compare_exchange_weak(p, value, std::memory_order_relaxed)) {
  }
}

/// current += delta, then raises peak to the new value; returns it.
inline int64_t add_to_current(std::atomic<int64_t>& current, std::atomic<int64_t>& peak, int64_t delta) {
  const int64_t now = current.fetch_add(delta) + delta;
  raise_peak(peak, now);
  return now;
}

}  // namespace edkm::detail
