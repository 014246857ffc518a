// The streaming engine (Engine::kStreaming): against the dense engine (forward, centroids and
// weight gradients) for every bit width, granularity and option that changes the math; memory.
#include <edkm/dkm/dkm.h>
#include <edkm/memory/memory.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "kernels/cpu/stream_isa.h"
#include "test_util.h"

namespace edkm {
namespace {

using test::expect_as_accurate;
using test::max_rel;
using test::run;

at::Tensor weights(std::vector<int64_t> shape, uint64_t seed, bool heavy_tail) {
  return heavy_tail ? test::student_t_like(shape, seed).to(at::kFloat) : test::llm_like(shape, seed);
}

// Streaming vs dense (fp32, and the fp64 ground truth) on the same weight, centroids, gradient.
void expect_matches_dense(const at::Tensor& w, const at::Tensor& g, const DKMOptions& o, const at::Tensor& scale = {}) {
  auto c = functional::init_centroids(w, o, scale);
  auto dense64 =
      run(w.to(at::kDouble), c.to(at::kDouble), g.to(at::kDouble), o, scale.defined() ? scale.to(at::kDouble) : scale);
  auto dense = run(w, c, g, o, scale);
  auto streaming = run(w, c, g, DKMOptions(o).engine(Engine::kStreaming), scale);
  EXPECT_EQ(streaming.iterations, dense.iterations);
  expect_as_accurate(streaming.out, dense.out, dense64.out, "forward");
  expect_as_accurate(streaming.centroids, dense.centroids, dense64.centroids, "centroids");
  expect_as_accurate(streaming.grad, dense.grad, dense64.grad, "gradient");
}

TEST(StreamingEngine, EqualsDenseForBitsGranularityAndStopping) {
  for (bool grouped : {false, true}) {
    for (bool heavy : {false, true}) {
      for (int64_t bits = 1; bits <= 8; ++bits) {
        for (double eps : {0.0, 1e-4}) {
          auto w = weights({96, 64}, 11 * bits + heavy, heavy);
          auto g = test::llm_like({96, 64}, 200 + bits) / 0.02;
          auto o = DKMOptions(bits).engine(Engine::kDense).epsilon(eps).max_iter(eps == 0 ? 3 : 6);
          if (grouped) o.granularity(Granularity::kPerGroupedChannel).group_size(16);
          SCOPED_TRACE("bits " + std::to_string(bits) + " eps " + std::to_string(eps) + " heavy " +
                       std::to_string(heavy) + " grouped " + std::to_string(grouped));
          expect_matches_dense(w, g, o);
        }
      }
    }
  }
}

// In fp64 both engines compute the same function to rounding: a sharp check of the math.
TEST(StreamingEngine, Float64IdenticalToDense) {
  for (auto o : {DKMOptions(3).engine(Engine::kDense),
                 DKMOptions(4).engine(Engine::kDense).granularity(Granularity::kPerGroupedChannel).group_size(8),
                 DKMOptions(2).engine(Engine::kDense).enforce_zero(true).prune_threshold(0).epsilon(0),
                 DKMOptions(3).engine(Engine::kDense).cluster_dim(2).epsilon(0),
                 DKMOptions(5).engine(Engine::kDense).tau(1e-3).max_iter(6)}) {
    auto w = test::llm_like({64, 48}, 21, at::kDouble);
    w.masked_fill_(w.abs() < 0.004, 0.0);
    auto g = test::llm_like({64, 48}, 22, at::kDouble) / 0.02;
    auto c = functional::init_centroids(w, o);
    auto dense = run(w, c, g, o);
    auto streaming = run(w, c, g, DKMOptions(o).engine(Engine::kStreaming));
    EXPECT_EQ(streaming.iterations, dense.iterations);
    EXPECT_LT(max_rel(streaming.out, dense.out), 1e-9);
    EXPECT_LT(max_rel(streaming.centroids, dense.centroids), 1e-9);
    EXPECT_LT(max_rel(streaming.grad, dense.grad), 1e-9);
  }
}

TEST(StreamingEngine, EnforceZeroPruneScaleAndVectors) {
  auto w = test::llm_like({64, 64}, 31);
  w.masked_fill_(w.abs() < 0.005, 0.0);
  auto g = test::llm_like({64, 64}, 32) / 0.02;
  for (double prune : {0.0, 1e-7}) {
    SCOPED_TRACE("prune " + std::to_string(prune));
    expect_matches_dense(w, g,
                         DKMOptions(3).engine(Engine::kDense).enforce_zero(true).prune_threshold(prune).epsilon(0));
  }
  {
    SCOPED_TRACE("per-channel scale");
    auto o = DKMOptions(3).engine(Engine::kDense).per_channel_scale(true);
    expect_matches_dense(w, g, o, functional::channel_scale(w, o.scale_scheme()));
  }
  for (int64_t d : {2, 4}) {
    SCOPED_TRACE("cluster_dim " + std::to_string(d));
    expect_matches_dense(w, g, DKMOptions(3).engine(Engine::kDense).cluster_dim(d).epsilon(0));
    expect_matches_dense(w, g,
                         DKMOptions(2)
                             .engine(Engine::kDense)
                             .cluster_dim(d)
                             .granularity(Granularity::kPerGroupedChannel)
                             .group_size(16));
  }
}

TEST(StreamingEngine, SixteenBitWeightsKeepTheirDtype) {
  for (auto dt : {at::kBFloat16, at::kHalf}) {
    // both compute in fp32 and round to the 16-bit type once at the end
    const auto o = DKMOptions(3).engine(Engine::kDense).granularity(Granularity::kPerGroupedChannel).group_size(16);
    const auto [dense, streaming] = test::expect_sixteen_bit_like_dense(dt, 41, o, Engine::kStreaming);
    EXPECT_LT(max_rel(streaming.centroids, dense.centroids), 1e-5);
  }
}

TEST(StreamingEngine, AutoPicksStreamingWhenTableCannot) {
  auto w = test::llm_like({64, 64}, 51);  // fp32 without the table opt-in
  auto o = DKMOptions(3).engine(Engine::kAuto);
  auto c = functional::init_centroids(w, o);
  EXPECT_TRUE(at::equal(functional::dkm_cluster(w, c, o).weight,
                        functional::dkm_cluster(w, c, DKMOptions(o).engine(Engine::kStreaming)).weight));
  auto ov = DKMOptions(2).engine(Engine::kDense).cluster_dim(32).engine(Engine::kAuto);  // beyond streaming: dense
  auto cv = functional::init_centroids(w, ov);
  EXPECT_TRUE(at::equal(functional::dkm_cluster(w, cv, ov).weight,
                        functional::dkm_cluster(w, cv, DKMOptions(ov).engine(Engine::kDense)).weight));
}

TEST(StreamingEngine, BadInputNamesTheEngine) {
  auto w = test::llm_like({64, 64}, 52);
  auto o = DKMOptions(2).engine(Engine::kDense).cluster_dim(32).engine(Engine::kStreaming);
  auto c = functional::init_centroids(w, DKMOptions(o).engine(Engine::kDense));
  test::expect_error([&] { functional::dkm_cluster(w, c, o); }, {"streaming engine", "cluster_dim"});
}

// Forward + backward never holds an N x K tensor: at 8 bits (K = 256) on a 1 MiB weight the
// dense engine needs ~N * K * 4 bytes per saved map; streaming stays within a few weight sizes.
TEST(StreamingEngine, MemoryDoesNotGrowWithK) {
  auto w = test::llm_like({512, 512}, 61).requires_grad_(true);
  auto o = DKMOptions(8).engine(Engine::kStreaming);
  auto c = functional::init_centroids(w, o);
  const int64_t weight_bytes = w.numel() * 4;
  int64_t peak = 0;
  {
    MemoryMeter meter;
    auto r = functional::dkm_cluster(w, c, o);
    r.weight.sum().backward();
    peak = meter.report().cpu.peak_delta();
  }
  // W_soft + its gradient + the weight's gradient + small partials
  EXPECT_LT(peak, 4 * weight_bytes) << "peak " << peak << " bytes for a " << weight_bytes << "-byte weight";
  EXPECT_GT(peak, 0);
}

TEST(StreamingKernels, CudaMatchesCpu) {
  EDKM_SKIP_WITHOUT_GPU();
  for (auto dt : {at::kFloat, at::kBFloat16}) {
    for (int64_t bits : {3, 8}) {
      auto w = test::llm_like({512, 384}, 71, dt);
      auto g = test::llm_like({512, 384}, 72, dt);
      auto o = DKMOptions(bits).engine(Engine::kStreaming).granularity(Granularity::kPerGroupedChannel).group_size(64);
      auto c = functional::init_centroids(w, o);
      auto cpu = run(w, c, g, o);
      auto gpu = run(w.cuda(), c.cuda(), g.cuda(), o);
      EXPECT_EQ(gpu.iterations, cpu.iterations);
      const double tol = dt == at::kFloat ? 1e-5 : 1e-2;
      EXPECT_LT(max_rel(gpu.out.cpu(), cpu.out), tol);
      EXPECT_LT(max_rel(gpu.centroids.cpu(), cpu.centroids), 1e-5);
      EXPECT_LT(max_rel(gpu.grad.cpu(), cpu.grad), dt == at::kFloat ? 1e-4 : 2e-2);
    }
  }
}

// Small shapes for compute-sanitizer racecheck (scripts/gpu_check.sh), covering both ways the CUDA
// kernel sums its partials: per-warp copies (width K * d + K + 1 <= 768) and, wider, one shared
// copy that each warp's lane 0 adds its warp's sum to with fp64 atomics (8 bits with cluster_dim 4:
// width 1,281; no other GPU test reaches it).
TEST(StreamingKernels, CudaSmallBothPartialSinks) {
  EDKM_SKIP_WITHOUT_GPU();
  for (int64_t dim : {1, 4}) {
    for (int64_t bits : {3, 8}) {
      auto w = test::llm_like({128, 64}, 73);
      auto g = test::llm_like({128, 64}, 74);
      auto o = DKMOptions(bits).engine(Engine::kStreaming).cluster_dim(dim);
      auto c = functional::init_centroids(w, o);
      auto cpu = run(w, c, g, o);
      auto gpu = run(w.cuda(), c.cuda(), g.cuda(), o);
      SCOPED_TRACE("bits " + std::to_string(bits) + ", cluster_dim " + std::to_string(dim));
      EXPECT_EQ(gpu.iterations, cpu.iterations);
      EXPECT_LT(max_rel(gpu.out.cpu(), cpu.out), 1e-5);
      EXPECT_LT(max_rel(gpu.centroids.cpu(), cpu.centroids), 1e-5);
      EXPECT_LT(max_rel(gpu.grad.cpu(), cpu.grad), 1e-4);
    }
  }
}

}  // namespace
}  // namespace edkm

namespace edkm {
namespace {

// The vectorised CPU paths (AVX2, AVX-512; cluster_dim 1, fp32 compute) against the per-weight
// reference path on the same inputs: forward, centroids and gradient within fp32 rounding (SLEEF's
// exp is within 1 ulp of expf, and FMA contraction differs), every bit width, per tensor and
// grouped, keep-sparsity and prune bias, bf16 weights, and sizes that leave partial 16-lane
// blocks and uneven work items.
TEST(StreamingEngine, VectorisedCpuPathsMatchTheReferencePath) {
  using kernels::StreamIsa;
  const StreamIsa best = kernels::stream_isa_available();
  if (best == StreamIsa::kScalar) GTEST_SKIP() << "no vectorised path in this build or CPU (needs SLEEF and AVX2)";
  struct Reset {
    StreamIsa was = kernels::stream_isa();
    ~Reset() { kernels::set_stream_isa(was); }
  } reset;
  std::vector<DKMOptions> configs;
  for (int64_t bits = 1; bits <= 8; ++bits) configs.push_back(DKMOptions(bits).engine(Engine::kStreaming));
  configs.push_back(
      DKMOptions(3).engine(Engine::kStreaming).granularity(Granularity::kPerGroupedChannel).group_size(8));
  configs.push_back(DKMOptions(3).engine(Engine::kStreaming).enforce_zero(true).prune_threshold(0).epsilon(0));
  configs.push_back(DKMOptions(2).engine(Engine::kStreaming).prune_threshold(1e-3).tau(1e-3).max_iter(5));
  configs.push_back(DKMOptions(4).engine(Engine::kStreaming).per_channel_scale(true));
  for (const auto& o : configs) {
    for (auto dtype : {at::kFloat, at::kBFloat16}) {
      const int64_t rows = o.granularity() == Granularity::kPerGroupedChannel ? 96 : 97;
      auto w = test::llm_like({rows, 13}, 31 + o.bits()).to(dtype);
      w.masked_fill_(w.abs() < 0.002, 0.0);
      auto g = (test::llm_like({rows, 13}, 32) / 0.02).to(dtype);
      at::Tensor scale = o.per_channel_scale() ? functional::channel_scale(w, o.scale_scheme()) : at::Tensor();
      auto c = functional::init_centroids(w, o, scale);
      kernels::set_stream_isa(StreamIsa::kScalar);
      const auto ref = run(w, c, g, o, scale);
      const auto exact = run(w.to(at::kDouble), c.to(at::kDouble), g.to(at::kDouble),
                             DKMOptions(o).engine(Engine::kDense), scale.defined() ? scale.to(at::kDouble) : scale);
      for (auto isa : {StreamIsa::kAvx2, StreamIsa::kAvx512}) {
        if (isa > best) continue;
        kernels::set_stream_isa(isa);
        const auto v = run(w, c, g, o, scale);
        SCOPED_TRACE(kernels::to_string(isa) + " bits " + std::to_string(o.bits()) + " " + c10::toString(dtype));
        EXPECT_EQ(v.iterations, ref.iterations);
        // As accurate as the reference path: within 1e-5 of it, or as close to fp64 dense as it is.
        if (dtype == at::kFloat) {
          expect_as_accurate(v.out, ref.out, exact.out, "forward");
          expect_as_accurate(v.centroids, ref.centroids, exact.centroids, "centroids");
          expect_as_accurate(v.grad, ref.grad, exact.grad, "gradient");
        } else {  // bf16 outputs: one bf16 rounding step apart at most
          EXPECT_LT(max_rel(v.out, ref.out), 1e-2);
          expect_as_accurate(v.centroids, ref.centroids, exact.centroids, "centroids");
          EXPECT_LT(max_rel(v.grad, ref.grad), 1e-2);
        }
      }
    }
  }
}

// Centroids so far from the weights that every -D/tau overflows fp32: the dense engine's softmax is
// NaN, and so is the streaming engine's on every path (the zero_threshold floor turned NaN into a
// plausible zero_threshold * sum(c) before), so the Palettizer's NaN check can see it.
TEST(StreamingEngine, OverflowedSoftmaxIsNaNOnEveryPathAsInTheDenseEngine) {
  using kernels::StreamIsa;
  struct Reset {
    StreamIsa was = kernels::stream_isa();
    ~Reset() { kernels::set_stream_isa(was); }
  } reset;
  const at::Tensor w = test::llm_like({16, 64}, 3);
  const at::Tensor c = at::tensor({1e18f, 2e18f}).reshape({1, 2, 1});
  const DKMOptions o = DKMOptions(1).max_iter(1);
  EXPECT_TRUE(at::isnan(functional::dkm_cluster(w, c, DKMOptions(o).engine(Engine::kDense)).weight).all().item<bool>());
  for (auto isa : {StreamIsa::kScalar, StreamIsa::kAvx2, StreamIsa::kAvx512}) {
    if (isa > kernels::stream_isa_available()) continue;
    kernels::set_stream_isa(isa);
    const auto out = functional::dkm_cluster(w, c, DKMOptions(o).engine(Engine::kStreaming));
    EXPECT_TRUE(at::isnan(out.weight).all().item<bool>()) << kernels::to_string(isa);
    EXPECT_FALSE(at::isfinite(out.centroids).all().item<bool>()) << kernels::to_string(isa);
  }
}

// The vectorised passes' inline exp (kernels/cpu/vec_exp.h) against fp64 exp rounded to fp32, on
// every 7th float of [ln(FLT_MIN), ln(FLT_MAX)] (about 320 million values, each ISA): within 1 ulp,
// as SLEEF's u10 exp it replaced (checked the same way here, on a sparser sweep); 0 below the
// normal range (the passes flush subnormals), inf above it, NaN kept.
TEST(StreamingKernels, InlineExpIsWithinOneUlpLikeSleef) {
  using kernels::StreamIsa;
  const StreamIsa best = kernels::stream_isa_available();
  if (best == StreamIsa::kScalar) GTEST_SKIP() << "no vectorised path in this build or CPU (needs SLEEF and AVX2)";
  const float lo = -87.3365447505531f, hi = 88.7228391116729996f;
  auto ulps = [](float a, float b) {
    int32_t ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return std::llabs(static_cast<int64_t>(ia) - static_cast<int64_t>(ib));
  };
  for (auto isa : {StreamIsa::kAvx2, StreamIsa::kAvx512}) {
    if (isa > best) continue;
    for (bool sleef : {false, true}) {
      const uint32_t stride = sleef ? 997 : 7;
      std::vector<float> in, out(1 << 16);
      in.reserve(1 << 16);
      int64_t worst = 0, checked = 0;
      float worst_at = 0;
      auto flush = [&] {
        in.resize((in.size() + 15) / 16 * 16, 0.0f);
        kernels::stream_exp(isa, sleef, in.data(), out.data(), static_cast<int64_t>(in.size()));
        for (size_t i = 0; i < in.size(); ++i) {
          const float want = static_cast<float>(std::exp(static_cast<double>(in[i])));
          if (want < std::numeric_limits<float>::min()) continue;  // subnormal: flushed by both
          const int64_t u = ulps(out[i], want);
          if (u > worst) worst = u, worst_at = in[i];
          ++checked;
        }
        in.clear();
      };
      for (uint64_t b = 0; b < 0x80000000ull; b += stride) {
        for (uint32_t sign : {0u, 0x80000000u}) {
          const uint32_t bits = static_cast<uint32_t>(b) | sign;
          float x;
          std::memcpy(&x, &bits, 4);
          if (!(x >= lo && x <= hi)) continue;
          in.push_back(x);
          if (in.size() == (1u << 16)) flush();
        }
      }
      flush();
      SCOPED_TRACE(kernels::to_string(isa) + (sleef ? " SLEEF" : " inline"));
      EXPECT_GT(checked, sleef ? 2000000 : 300000000);
      EXPECT_LE(worst, 1) << "at x = " << worst_at;
    }
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    std::vector<float> special = {nan,
                                  -inf,
                                  inf,
                                  -88.0f,
                                  -87.34f,
                                  -1000.0f,
                                  88.73f,
                                  1000.0f,
                                  0.0f,
                                  -0.0f,
                                  1.0f,
                                  -1.0f,
                                  1e-30f,
                                  -1e-30f,
                                  std::nextafter(hi, 0.0f),
                                  std::nextafter(lo, 0.0f)};  // hi and lo round outward: the last finite and normal
    std::vector<float> got(16);
    kernels::stream_exp(isa, false, special.data(), got.data(), 16);
    EXPECT_TRUE(std::isnan(got[0]));
    for (int i : {1, 3, 4, 5}) EXPECT_EQ(got[i], 0.0f) << special[i];
    for (int i : {2, 6, 7}) EXPECT_EQ(got[i], inf) << special[i];
    for (int i : {8, 9, 12, 13}) EXPECT_EQ(got[i], 1.0f) << special[i];
    EXPECT_LE(ulps(got[10], static_cast<float>(std::exp(1.0))), 1);
    EXPECT_LE(ulps(got[11], static_cast<float>(std::exp(-1.0))), 1);
    EXPECT_TRUE(std::isfinite(got[14]) && got[14] > 3.4e38f) << got[14];
    EXPECT_GE(got[15], std::numeric_limits<float>::min()) << got[15];
  }
  std::vector<float> odd(15), sink(15);
  EXPECT_THROW(kernels::stream_exp(best, false, odd.data(), sink.data(), 15), c10::Error);
  EXPECT_THROW(kernels::stream_exp(StreamIsa::kScalar, false, odd.data(), sink.data(), 0), c10::Error);
}

// Exact work skipping (kernels/cpu/stream_block.h) against the same vectorised passes without
// it: forward, centroids and gradient as accurate as the unskipped passes (against fp64 dense),
// for every bit width, tau from 1e-5 to 1e-2, per tensor and grouped, keep-sparsity, prune bias,
// bf16 weights, a zero_threshold below the skip bound, and tiles of more than one value-ordered
// tile with partial blocks. Weights at SmolLM2's scale (std 0.2), where windows do leave terms
// out: the test also checks that they did.
TEST(StreamingEngine, ExactSkippingMatchesTheUnskippedPasses) {
  using kernels::StreamSkip;
  if (kernels::stream_isa_available() == kernels::StreamIsa::kScalar)
    GTEST_SKIP() << "no vectorised path in this build or CPU (needs SLEEF and AVX2)";
  struct Reset {
    StreamSkip was = kernels::stream_skip();
    ~Reset() { kernels::set_stream_skip(was); }
  } reset;
  std::vector<DKMOptions> configs;
  for (int64_t bits = 1; bits <= 8; ++bits)
    for (double tau : {1e-5, 1e-4, 1e-3, 1e-2})
      configs.push_back(DKMOptions(bits).engine(Engine::kDense).tau(tau).max_iter(3));
  configs.push_back(DKMOptions(4).engine(Engine::kDense).granularity(Granularity::kPerGroupedChannel).group_size(16));
  configs.push_back(DKMOptions(6).engine(Engine::kDense).enforce_zero(true).prune_threshold(0).epsilon(0));
  configs.push_back(DKMOptions(5).engine(Engine::kDense).prune_threshold(1e-3).tau(1e-3).max_iter(4));
  configs.push_back(DKMOptions(8).engine(Engine::kDense).zero_threshold(1e-20).tau(1e-5));
  int64_t left_out_total = 0;
  for (auto o : configs) {
    o.engine(Engine::kStreaming);
    for (auto dtype : {at::kFloat, at::kBFloat16}) {
      if (dtype == at::kBFloat16 && o.tau() != 1e-4) continue;
      const int64_t rows = o.granularity() == Granularity::kPerGroupedChannel ? 96 : 97;
      auto w = (test::llm_like({rows, 61}, 41 + o.bits()) * 10.0).to(dtype);  // 5917 weights: two tiles
      if (o.enforce_zero()) w.masked_fill_(w.abs() < 0.02, 0.0);
      auto g = (test::llm_like({rows, 61}, 42) / 0.02).to(dtype);
      auto c = functional::init_centroids(w, o);
      kernels::set_stream_skip(StreamSkip::kOff);
      const auto ref = run(w, c, g, o);
      const int64_t before = kernels::stream_skipped_terms();
      kernels::set_stream_skip(StreamSkip::kAlways);
      const auto v = run(w, c, g, o);
      const int64_t left_out = kernels::stream_skipped_terms() - before;
      left_out_total += left_out;
      const auto exact =
          run(w.to(at::kDouble), c.to(at::kDouble), g.to(at::kDouble), DKMOptions(o).engine(Engine::kDense));
      SCOPED_TRACE("bits " + std::to_string(o.bits()) + " tau " + std::to_string(o.tau()) + " " + c10::toString(dtype) +
                   " left out " + std::to_string(left_out));
      EXPECT_EQ(v.iterations, ref.iterations);
      if (o.bits() >= 3 && o.tau() <= 1e-4) EXPECT_GT(left_out, 0);
      if (dtype == at::kFloat) {
        expect_as_accurate(v.out, ref.out, exact.out, "forward");
        expect_as_accurate(v.centroids, ref.centroids, exact.centroids, "centroids");
        expect_as_accurate(v.grad, ref.grad, exact.grad, "gradient");
      } else {
        EXPECT_LT(max_rel(v.out, ref.out), 1e-2);
        expect_as_accurate(v.centroids, ref.centroids, exact.centroids, "centroids");
        EXPECT_LT(max_rel(v.grad, ref.grad), 1e-2);
      }
    }
  }
  EXPECT_GT(left_out_total, 0);
}

}  // namespace
}  // namespace edkm
