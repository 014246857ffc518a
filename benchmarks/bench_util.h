#pragma once
// Helpers shared by the benchmark programs: argument parsing and device synchronisation (the
// torch-free ones are in results_io.h).
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <edkm/dkm/dkm.h>
#include <edkm/memory/memory.h>
#include <edkm/offload/saved_tensor_hooks.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "results_io.h"

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace edkm::bench {

/// "RxC" -> {R, C}: two positive integers (at most 2^31 each), nothing else.
inline std::vector<int64_t> parse_shape(const std::string& s) {
  const auto x = s.find('x');
  auto number = [&s](const std::string& part) {
    if (part.empty() || part.size() > 10 || part.find_first_not_of("0123456789") != std::string::npos)
      throw std::invalid_argument("shape must be RxC with two positive integers, got '" + s + "'");
    const int64_t v = std::stoll(part);
    if (v < 1 || v > (int64_t{1} << 31)) throw std::invalid_argument("shape '" + s + "': sizes must be in 1..2^31");
    return v;
  };
  if (x == std::string::npos) throw std::invalid_argument("shape must be RxC, got '" + s + "'");
  return {number(s.substr(0, x)), number(s.substr(x + 1))};
}

/// Waits for the device's queued work (no-op on the CPU).
inline void sync(const at::Device& d) {
#if defined(EDKM_WITH_CUDA)
  if (d.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)d;
#endif
}

/// For main's `catch (...)`: prints "<program>: <message>" to stderr (a c10::Error without its
/// backtrace) and returns main's exit status, 1. Other than std::exception, nothing is caught.
inline int error_exit(const char* program) {
  try {
    throw;
  } catch (const c10::Error& e) {
    std::cerr << program << ": " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << program << ": " << e.what() << "\n";
  }
  return 1;
}

/// One measured DKM forward+backward (`measured_dkm_step`).
struct DkmStep {
  at::Tensor weight;          ///< the leaf the step ran on: weight.grad() is dL/dW
  at::Tensor soft;            ///< W_soft, detached
  double seconds = 0;         ///< wall time, the device synchronised before the clock stops
  edkm::MemoryReport memory;  ///< memory over the step
};

/// A fresh leaf copy of `weight`, the DKM forward under `hooks` (saved-tensor hooks, none when
/// null) and the backward of `grad`, timed and metered.
inline DkmStep measured_dkm_step(const at::Tensor& weight, const at::Tensor& centroids, const edkm::DKMOptions& options,
                                 const at::Tensor& grad,
                                 const std::shared_ptr<edkm::SavedTensorHooks>& hooks = nullptr) {
  DkmStep step;
  step.weight = weight.clone().requires_grad_(true);
  sync(weight.device());
  edkm::MemoryMeter meter;
  const auto t0 = std::chrono::steady_clock::now();
  {
    std::optional<edkm::SavedTensorHooksGuard> guard;
    if (hooks) guard.emplace(hooks);
    step.soft = edkm::functional::dkm_cluster(step.weight, centroids, options).weight;
  }
  step.soft.backward(grad);
  sync(weight.device());
  step.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  step.memory = meter.report();
  step.soft = step.soft.detach();
  return step;
}

}  // namespace edkm::bench
