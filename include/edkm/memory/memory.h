#pragma once
// Memory measurement over a scope: CPU (counting allocator), CUDA (caching allocator stats),
// pinned host memory (CUDA host allocator stats), edkm's host memory pools.
#include <cstdint>
#include <string>

#include "edkm/export.h"

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
