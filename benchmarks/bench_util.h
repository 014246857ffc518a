#pragma once
// Helpers shared by the benchmark programs: argument parsing and device synchronisation (the
// torch-free ones are in results_io.h).
#include <ATen/core/Tensor.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "results_io.h"

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace edkm::bench {

/// "RxC" -> {R, C}.
inline std::vector<int64_t> parse_shape(const std::string& s) {
  auto x = s.find('x');
  if (x == std::string::npos) throw std::invalid_argument("shape must be RxC, got " + s);
  return {std::stoll(s.substr(0, x)), std::stoll(s.substr(x + 1))};
}

/// Waits for the device's queued work (no-op on the CPU).
inline void sync(const at::Device& d) {
#if defined(EDKM_WITH_CUDA)
  if (d.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)d;
#endif
}

}  // namespace edkm::bench
