#pragma once
// Shared helpers of the tests: seeded tensors, GPU skip, closeness.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace edkm::test {

inline bool has_gpu() {
#if defined(EDKM_WITH_CUDA)
  return c10::cuda::device_count() > 0;
#else
  return false;
#endif
}

#define EDKM_SKIP_WITHOUT_GPU() \
  if (!::edkm::test::has_gpu()) GTEST_SKIP() << "no CUDA device"

/// Expects `f` to throw a c10::Error whose message contains every one of `parts`.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one naming: " << *parts.begin();
  } catch (const c10::Error& e) {
    for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

/// max |a - b| / max |b| (0 when both are zero).
inline double max_rel(const at::Tensor& a, const at::Tensor& b) {
  auto a64 = a.detach().to(at::kDouble).cpu(), b64 = b.detach().to(at::kDouble).cpu();
  const double denom = b64.abs().max().item<double>();
  const double diff = (a64 - b64).abs().max().item<double>();
  return denom == 0 ? diff : diff / denom;
}

/// Weights like a trained layer's: N(0, 0.02^2), seeded.
inline at::Tensor llm_like(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dtype = at::kFloat) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return (at::randn(shape, gen, at::TensorOptions().dtype(at::kDouble)) * 0.02).to(dtype);
}

}  // namespace edkm::test
