#pragma once
// Memory measurement over a scope: CPU (counting allocator), CUDA (caching allocator stats),
// pinned host memory (CUDA host allocator stats), edkm's host memory pools.
#include <torch/arg.h>

#include <cstdint>
#include <string>

#include "edkm/export.h"
#include "edkm/memory/host_pool.h"

namespace edkm {

/// Bytes of one kind of memory over a meter's scope.
struct MemoryFigures {
  int64_t start = 0;    ///< bytes in use when the meter started
  int64_t current = 0;  ///< bytes in use now
  int64_t peak = 0;     ///< highest bytes in use since the meter started (absolute)
  /// Peak above the start: what the scope added at its worst.
  int64_t peak_delta() const { return peak - start; }
  /// Bytes in use now above the start.
  int64_t current_delta() const { return current - start; }
};

/// A snapshot of all meters.
struct EDKM_API MemoryReport {
  MemoryFigures cpu;     ///< CPU tensors allocated through LibTorch's CPU allocator
  MemoryFigures cuda;    ///< CUDA caching allocator, allocated bytes, current device
  MemoryFigures pinned;  ///< pinned host memory of the CUDA host allocator (in use)
  /// Host memory reserved by every edkm::HostMemoryPool of the process (pinned or not; not part
  /// of `cpu` or `pinned`: the pools allocate outside LibTorch's allocators)
  MemoryFigures host_pool;
  bool has_cuda = false;
  std::string to_string() const;
};

/// Installs edkm's counting allocator as LibTorch's CPU allocator (wrapping the one in place).
/// Idempotent and thread-safe; MemoryMeter calls it. Only CPU memory allocated after the
/// installation is counted.
EDKM_API void install_cpu_memory_counter();
/// Bytes currently allocated through the counting CPU allocator.
EDKM_API int64_t cpu_bytes_in_use();

/// Options of the caching CPU allocator.
struct EDKM_API CpuCachingAllocatorOptions {
  /// Requests of at least this many bytes are cached; smaller ones go to LibTorch's allocator
  /// (malloc keeps those in its heap anyway). Default 1 MiB.
  TORCH_ARG(int64_t, min_block_bytes) = int64_t{1} << 20;
  /// Most bytes kept cached; 0: no limit beyond peak_bound. Default 0.
  TORCH_ARG(int64_t, max_cached_bytes) = 0;
  /// Cached + in use stays at most this times the most bytes in use (HostMemoryPoolOptions::
  /// peak_bound); 0: no bound. Default 1.25.
  TORCH_ARG(double, peak_bound) = 1.25;

 public:
  /// Throws on a negative size or a peak_bound in (0, 1).
  void validate() const;
};

/// Caches LibTorch's large CPU allocations for reuse instead of returning them to the system.
///
/// Why: malloc serves a large block (above its mmap threshold, 128 KiB rising to at most 32 MiB in
/// glibc) with a fresh mapping and unmaps it when freed, so every training step page-faults and has
/// the kernel zero its activations and gradients again. On a 2-core VM that was half of a SmolLM2-135M
/// fine-tuning step (benchmarks/results/smollm2_dkm_step_cpu.md). Here the blocks of a step are reused
/// by size class (HostMemoryPool::size_class: at most 1/8 of the size rounded up, as address space;
/// pages are only touched as used) by the next step, and with peak_bound the cache holds no more than
/// a quarter above the most the process had in use in such blocks.
///
/// Installs edkm's CPU allocator (install_cpu_memory_counter) and routes requests of at least
/// min_block_bytes to a pool. Calling it again replaces the options (the old cache is emptied; its
/// blocks in use return to the system when released). Thread-safe. CPU tensors and MemoryMeter's
/// cpu figures are unchanged: a block handed out counts its requested bytes there, as before.
///
/// Example (at the top of a CPU training program):
///   edkm::enable_cpu_caching_allocator();
///   for (...) { step(); }
///   std::cout << edkm::cpu_caching_allocator_stats().to_string();
EDKM_API void enable_cpu_caching_allocator(CpuCachingAllocatorOptions options = {});
/// Stops caching: new requests go to LibTorch's allocator; the cache is emptied; blocks in use
/// return to the system when released. No-op when not enabled.
EDKM_API void disable_cpu_caching_allocator();
EDKM_API bool cpu_caching_allocator_enabled();
/// Statistics of the cache (all zero when not enabled).
EDKM_API HostPoolStats cpu_caching_allocator_stats();
/// Returns the cached blocks to the system (blocks in use stay).
EDKM_API void cpu_caching_allocator_empty_cache();

/// RAII meter: peak and current bytes of CPU, CUDA and pinned memory over its lifetime.
/// Meters nest (inner meters do not disturb the peaks of outer ones) when used from one
/// thread at a time; allocations of every thread count.
///
/// Example:
///   edkm::MemoryMeter meter;
///   auto y = model->forward(x); y.sum().backward();
///   std::cout << meter.report().cpu.peak_delta() << " bytes at peak\n";
class EDKM_API MemoryMeter {
 public:
  /// `cuda_device` < 0: the current CUDA device.
  explicit MemoryMeter(int cuda_device = -1);
  ~MemoryMeter();
  MemoryMeter(const MemoryMeter&) = delete;
  MemoryMeter& operator=(const MemoryMeter&) = delete;

  /// Figures now (for CUDA, call after synchronising if the work is asynchronous).
  MemoryReport report() const;

 private:
  struct Peaks {
    int64_t cpu = 0, cuda = 0, pinned = 0, host_pool = 0;
  };
  int device_ = 0;
  bool has_cuda_ = false;
  MemoryReport start_;
  Peaks carried_;  // peaks seen before a nested meter reset the global peaks
  MemoryMeter* parent_ = nullptr;
};

}  // namespace edkm
