#pragma once
// Options the example programs share.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
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
// kernel (--keep-host-memory). glibc serves a block above its mmap threshold (128 KiB, rising to at
// most 32 MiB) with a fresh mmap and unmaps it when freed, so every training step page-faults and
// zeroes its activations again: on this 2-core VM that was half of a SmolLM2 fine-tuning step
// (`perf`: 48.6% of the samples in the kernel's clear_page_erms). With these thresholds the step took
// 15.0 s instead of 18.9-23.5 s, but the process's peak resident set grew from 5.4 to 7.8 GB
// (freed blocks of other sizes stay in the heap): a trade, so an opt-in. MALLOC_MMAP_THRESHOLD_ /
// MALLOC_TRIM_THRESHOLD_ in the environment take precedence.
inline void keep_freed_host_memory() {
#if defined(__GLIBC__)
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("MALLOC_TRIM_THRESHOLD_")) return;
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, static_cast<int>((1u << 31) - 1));
#endif
}

}  // namespace edkm::examples
