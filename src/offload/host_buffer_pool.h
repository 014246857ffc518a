#pragma once
// A minimal size-class pool of host byte buffers (pageable or pinned), internal to the offloader.
// (edkm::HostMemoryPool, the general pool, is separate; they are to be unified.)
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

namespace edkm::detail {

class HostBufferPool {
 public:
  explicit HostBufferPool(int64_t max_cached_bytes) : max_cached_bytes_(max_cached_bytes) {}

  /// Size class of `bytes`: rounded up to a quarter of its power of two (<= 25% waste), >= 4 KiB.
  static int64_t size_class(int64_t bytes);

  /// A uint8 CPU buffer of size_class(bytes) bytes, reused when one is free. `hit` tells which.
  at::Tensor acquire(int64_t bytes, bool pinned, bool* hit);
  /// Gives a buffer from acquire() back for reuse (or frees it if the pool is full).
  void release(at::Tensor buffer, bool pinned);
  /// Frees every cached buffer.
  void clear();
  int64_t cached_bytes() const;

 private:
  mutable std::mutex mu_;
  int64_t max_cached_bytes_;
  int64_t cached_bytes_ = 0;
  std::map<std::pair<int64_t, bool>, std::vector<at::Tensor>> free_;
};

}  // namespace edkm::detail
