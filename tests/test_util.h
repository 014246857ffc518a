#pragma once
// Shared helpers of the tests: seeded tensors, GPU skip, closeness.
#include <ATen/ATen.h>
#include <edkm/dkm/dkm.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <string>
#include <utility>

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

/// GPT-2's byte-to-unicode character of byte `b`, written independently of the library: printable
/// Latin-1 stands for itself, the other bytes take U+0100.. in order.
inline std::string byte_char(int b) {
  int next = 256, cp = -1;
  for (int x = 0; x < 256; ++x) {
    const bool printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
    const int c = printable ? x : next++;
    if (x == b) cp = c;
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

/// Whether a missing GPU is a failure rather than a skip: EDKM_REQUIRE_GPU=1 (set by a GPU check
/// run, where a skipped GPU test would hide, e.g., a driver too old for this CUDA build).
inline bool gpu_required() {
  const char* v = std::getenv("EDKM_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

#define EDKM_SKIP_WITHOUT_GPU()                                                                    \
  if (!::edkm::test::has_gpu()) {                                                                  \
    if (::edkm::test::gpu_required()) FAIL() << "EDKM_REQUIRE_GPU=1 but no CUDA device is usable"; \
    GTEST_SKIP() << "no CUDA device";                                                              \
  }

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

/// One clustering pass and its backward against the upstream gradient `g`.
struct Run {
  at::Tensor out, grad, centroids;
  int64_t iterations;
};
inline Run run(const at::Tensor& w, const at::Tensor& c, const at::Tensor& g, const DKMOptions& o,
               const at::Tensor& scale = {}) {
  auto wr = w.clone().requires_grad_(true);
  auto r = functional::dkm_cluster(wr, c, o, scale);
  (r.weight.to(g.scalar_type()) * g).sum().backward();
  return {r.weight.detach(), wr.grad(), r.centroids, r.iterations};
}

/// Within 1e-5 (relative) of the fp32 dense engine, or else at least as close to the fp64 dense
/// result as the fp32 dense engine is: at tau = 1e-4 fp32 rounding is amplified by 1/tau and two
/// correct fp32 implementations can differ by more than 1e-5 (see tests/parity).
inline void expect_as_accurate(const at::Tensor& engine, const at::Tensor& dense32, const at::Tensor& dense64,
                               const char* what) {
  const double err = max_rel(engine, dense32);
  if (err <= 1e-5) return;
  const double floor = max_rel(dense32, dense64);
  EXPECT_LE(max_rel(engine, dense64), std::max(1e-6, 1.25 * floor))
      << what << ": " << err << " from fp32 dense, whose own error is " << floor;
}

/// Weights like a trained layer's: N(0, 0.02^2), seeded.
inline at::Tensor llm_like(std::vector<int64_t> shape, uint64_t seed, at::ScalarType dtype = at::kFloat) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return (at::randn(shape, gen, at::TensorOptions().dtype(at::kDouble)) * 0.02).to(dtype);
}

/// A [64, 128] weight and gradient of 16-bit dtype `dt` (seeded `seed`, `seed` + 1) clustered by
/// the dense engine and by `engine` with options `o`: the engine's weight and gradient keep `dt`
/// and, both rounding to it once at the end, agree with dense at its precision. Returns both runs.
inline std::pair<Run, Run> expect_sixteen_bit_like_dense(at::ScalarType dt, uint64_t seed, const DKMOptions& o,
                                                         Engine engine) {
  auto w = llm_like({64, 128}, seed, dt);
  auto g = llm_like({64, 128}, seed + 1, dt);
  auto c = functional::init_centroids(w, o);
  auto dense = run(w, c, g, o);
  auto other = run(w, c, g, DKMOptions(o).engine(engine));
  EXPECT_EQ(other.out.scalar_type(), dt);
  EXPECT_EQ(other.grad.scalar_type(), dt);
  EXPECT_LT(max_rel(other.out, dense.out), 1e-2);
  EXPECT_LT(max_rel(other.grad, dense.grad), 2e-2);
  return {dense, other};
}

/// Heavy-tailed weights: 0.01 * Student-t(3), seeded, fp64.
inline at::Tensor student_t_like(const std::vector<int64_t>& shape, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<double> t(3.0);
  auto w = at::empty(shape, at::kDouble);
  auto* p = w.data_ptr<double>();
  for (int64_t i = 0; i < w.numel(); ++i) p[i] = 0.01 * t(rng);
  return w;
}

}  // namespace edkm::test
