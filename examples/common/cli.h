#pragma once
// Options the example programs share.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <edkm/memory/memory.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace edkm::examples {

// --threads: <= 0 keeps LibTorch's default. More than 4x the hardware threads is refused: such a
// count only oversubscribes (1000 threads on 2 cores ran 50x slower; 100000 never finished).
inline void set_threads(int64_t threads) {
  if (threads <= 0) return;
  const int64_t hw = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  TORCH_CHECK(threads <= 4 * hw, "--threads ", threads, " is more than 4x the ", hw,
              " hardware threads of this machine");
  at::set_num_threads(static_cast<int>(threads));
}

// Keeps freed host memory in the process for the next step instead of handing it back to the
// kernel (--keep-host-memory), the route before --host-cache (enable_host_cache below). glibc serves
// a block above its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh mmap and unmaps
// it when freed, so every training step page-faults and zeroes its activations again. With these
// thresholds a SmolLM2 step took 15.2 s instead of 23.3 s, but the peak resident set grew from 6.39
// to 7.17 GB (freed blocks of other sizes stay in the heap); --host-cache 1.25 gave 12.6 s and 6.59
// GB (benchmarks/results/smollm2_dkm_step_cpu.md). MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
// in the environment take precedence.
inline void keep_freed_host_memory() {
#if defined(__GLIBC__)
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("MALLOC_TRIM_THRESHOLD_")) return;
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, static_cast<int>((1u << 31) - 1));
#endif
}

// The process's peak resident set in bytes (getrusage; 0 where unavailable).
inline int64_t peak_resident_bytes() {
  struct rusage u {};
  if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return static_cast<int64_t>(u.ru_maxrss) * 1024;  // KiB on Linux
}

// --host-cache off|unbounded|B: edkm::enable_cpu_caching_allocator with peak_bound B (>= 1).
inline void enable_host_cache(const std::string& spec) {
  if (spec == "off") return;
  double bound = 0;
  if (spec != "unbounded") {
    size_t used = 0;
    try {
      bound = std::stod(spec, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TORCH_CHECK(used == spec.size() && used > 0 && bound >= 1 && std::isfinite(bound),
                "--host-cache must be 'off', 'unbounded' or a number >= 1, got '", spec, "'");
  }
  edkm::enable_cpu_caching_allocator(edkm::CpuCachingAllocatorOptions().peak_bound(bound));
}

}  // namespace edkm::examples
