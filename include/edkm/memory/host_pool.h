#pragma once
// A pool of host memory blocks, pinned (page-locked) when a CUDA device is present, that reuses
// released blocks by size class and counts what it holds. Built for the offloader, which copies
// saved tensors to host buffers and back many times per step: after the first step every buffer
// comes from the cache (no cudaHostAlloc, whose cost is milliseconds, and no page faults).
//
// Size classes: requests up to 512 B get 512 B; up to 1 MiB the next power of two; above, the next
// multiple of 1/8 of the enclosing power of two (at most 25% slack). A released block goes back
// to the free list of its class, and `allocate` takes from the list of the request's class.
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "edkm/export.h"

namespace edkm {

namespace detail {
struct HostPoolState;
struct HostPoolAccess;
}  // namespace detail

/// A page-locking allocator: `alloc(bytes)` returns page-locked memory or nullptr (or throws)
/// when it cannot; `free` returns a block alloc gave. Default (empty): cudaHostAlloc /
/// cudaFreeHost. Give your own for cudaHostRegister'ed or NUMA-placed memory.
struct HostAllocator {
  std::function<void*(size_t)> alloc;
  std::function<void(void*)> free;
};

/// Options of HostMemoryPool.
struct EDKM_API HostMemoryPoolOptions {
  /// Page-locked memory (cudaHostAlloc) when edkm has CUDA and a device is present; otherwise,
  /// or when false, ordinary aligned host memory. Default true.
  TORCH_ARG(bool, pinned) = true;
  /// The page-locking allocator of a pinned pool (see HostAllocator); with one given, the pool is
  /// pinned even without a CUDA device. When it fails, the pool falls back to ordinary aligned
  /// memory for that block, warns once and counts it (HostPoolStats::pinned_fallbacks): copies
  /// to and from the GPU then are synchronous, but nothing fails.
  TORCH_ARG(HostAllocator, pinned_allocator);
  /// Alignment of every block in bytes: a power of two from 16 to 65536. Default 256.
  TORCH_ARG(int64_t, alignment) = 256;
  /// Most bytes kept in the free lists; a released block beyond this is returned to the system.
  /// 0: no limit. Default 0.
  TORCH_ARG(int64_t, max_cached_bytes) = 0;
  /// When > 0, the bytes the pool holds (in use + cached) stay at most peak_bound x the most
  /// bytes it has had in use (since it was built or its cache last emptied): before a miss takes a
  /// new block from the system, the least recently released cached blocks go back to the system as
  /// far as needed. 1: the cache costs no memory beyond the peak a process without it reaches too,
  /// but a block freed before a larger one is needed cannot be kept (no splitting), so a repeating
  /// pattern of such temporaries misses every round; a little above 1 keeps them. 0 or >= 1.
  /// Default 0 (no bound: the offloader's pools keep what they cached, up to max_cached_bytes).
  TORCH_ARG(double, peak_bound) = 0;

 public:
  /// Throws on a bad alignment or a negative max_cached_bytes.
  void validate() const;
};

/// What a pool holds and how it served requests.
struct EDKM_API HostPoolStats {
  int64_t reserved_bytes = 0;       ///< held from the system: in use + cached
  int64_t in_use_bytes = 0;         ///< of blocks handed out (their size classes)
  int64_t requested_bytes = 0;      ///< asked for by the blocks handed out
  int64_t cached_bytes = 0;         ///< in the free lists
  int64_t peak_reserved_bytes = 0;  ///< highest reserved_bytes (since construction or reset_peak_stats)
  int64_t peak_in_use_bytes = 0;    ///< highest in_use_bytes
  int64_t hits = 0;                 ///< allocations served from a free list
  int64_t misses = 0;               ///< allocations that went to the system
  int64_t system_frees = 0;         ///< blocks returned to the system
  int64_t evictions = 0;            ///< cached blocks returned to the system to stay within peak_bound
  int64_t blocks_in_use = 0;
  int64_t cached_blocks = 0;
  int64_t pinned_fallbacks = 0;  ///< blocks of a pinned pool that page-locked allocation could not give
  std::string to_string() const;
};

/// A pool of host memory blocks. Thread-safe. Blocks and tensors handed out may outlive the pool
/// object: they are freed when released.
///
/// A block must not be released while an asynchronous copy still uses it: the user of
/// non-blocking copies synchronises (or waits on an event) before dropping the block or tensor.
///
/// Example:
///   edkm::HostMemoryPool pool;                       // pinned when a GPU is present
///   at::Tensor host = pool.empty({4096, 4096}, at::kBFloat16);
///   host.copy_(activation, /*non_blocking=*/true);   // D2H into pinned memory
///   ...; host.reset();                               // the block goes back to the pool
///   std::cout << pool.stats().to_string();
class EDKM_API HostMemoryPool {
 public:
  /// A block of the pool: returns to it when destroyed or released. Move-only.
  class EDKM_API Block {
   public:
    Block() = default;
    ~Block();
    Block(Block&& other) noexcept;
    Block& operator=(Block&& other) noexcept;
    Block(const Block&) = delete;
    Block& operator=(const Block&) = delete;

    void* data() const { return data_; }
    /// Bytes requested.
    size_t size() const { return size_; }
    /// Bytes of the block (its size class).
    size_t capacity() const { return capacity_; }
    /// Page-locked memory (false for a pinned pool's fallback blocks).
    bool pinned() const;
    /// Whether the block came from the pool's free lists (a hit) rather than from the system.
    bool reused() const { return reused_; }
    explicit operator bool() const { return data_ != nullptr; }
    /// Returns the block to the pool now (no-op when empty).
    void release();

   private:
    friend class HostMemoryPool;
    std::shared_ptr<detail::HostPoolState> pool_;
    void* data_ = nullptr;
    size_t size_ = 0, capacity_ = 0;
    bool reused_ = false;
  };

  explicit HostMemoryPool(HostMemoryPoolOptions options = {});
  /// Frees the cached blocks; blocks still handed out are freed when released.
  ~HostMemoryPool();
  HostMemoryPool(const HostMemoryPool&) = delete;
  HostMemoryPool& operator=(const HostMemoryPool&) = delete;

  /// A block of at least `bytes` (> 0 gives a non-empty block; 0 gives an empty one).
  Block allocate(size_t bytes);
  /// A contiguous CPU tensor on a pool block (pinned when the pool is); its storage returns the
  /// block to the pool when the last tensor using it dies. Contents are uninitialised.
  at::Tensor empty(at::IntArrayRef sizes, at::ScalarType dtype);
  /// empty(src.sizes(), src.scalar_type()).
  at::Tensor empty_like(const at::Tensor& src);
  /// A contiguous CPU tensor of `sizes` and `dtype` over `block` (a block of this or another pool,
  /// at least that large; empty only for zero elements): the block returns to its pool when the
  /// tensor's storage dies. What `empty` does after `allocate`; use it to see `block.reused()`.
  static at::Tensor wrap(Block block, at::IntArrayRef sizes, at::ScalarType dtype);
  /// Returns every cached block to the system (and restarts peak_bound's peak from the bytes in
  /// use now).
  void empty_cache();
  HostPoolStats stats() const;
  /// Peaks restart from the current figures.
  void reset_peak_stats();
  /// Whether the blocks are page-locked.
  bool pinned() const;
  const HostMemoryPoolOptions& options() const;

  /// The size class of a request (before rounding to the alignment).
  static size_t size_class(size_t bytes);

 private:
  friend struct detail::HostPoolAccess;
  std::shared_ptr<detail::HostPoolState> state_;
};

}  // namespace edkm
