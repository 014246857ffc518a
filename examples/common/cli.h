#pragma once
// Options the example programs share.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <thread>

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

}  // namespace edkm::examples
