// The table engine (Engine::kTable): against the dense engine, its kernels' shared math, bad input.
#include <edkm/dkm/dkm.h>
#include <edkm/offload/offloader.h>
#include <edkm/offload/saved_tensor_hooks.h>

#include <cstring>
#include <random>

#include "kernels/table_math.h"
#include "test_util.h"

namespace edkm {
namespace {

using test::expect_as_accurate;
using test::max_rel;
using test::run;

// fp32 weights whose values are exactly bf16 values: the table engine (fp32 opt-in, rounding is
// the identity) and the dense engine see identical inputs.
at::Tensor bf16_valued(std::vector<int64_t> shape, uint64_t seed, bool heavy_tail) {
  if (!heavy_tail) return test::llm_like(shape, seed, at::kBFloat16).to(at::kFloat);
  return test::student_t_like(shape, seed).to(at::kBFloat16).to(at::kFloat);
}

TEST(TableEngine, EqualsDenseForBitsAndStopping) {
  for (bool heavy : {false, true}) {
    for (int64_t bits = 1; bits <= 8; ++bits) {
      for (double eps : {0.0, 1e-4}) {
        auto w = bf16_valued({128, 96}, 7 * bits + heavy, heavy);
        auto g = test::llm_like({128, 96}, 100 + bits, at::kFloat) / 0.02;
        auto o = DKMOptions(bits).engine(Engine::kDense).epsilon(eps).max_iter(eps == 0 ? 3 : 10);
        auto c = functional::init_centroids(w, o);
        auto dense64 = run(w.to(at::kDouble), c.to(at::kDouble), g.to(at::kDouble), o);
        auto dense = run(w, c, g, o);
        auto table = run(w, c, g, DKMOptions(o).engine(Engine::kTable).table_fp32_as_bf16(true));
        SCOPED_TRACE("bits " + std::to_string(bits) + " eps " + std::to_string(eps) + " heavy " +
                     std::to_string(heavy));
        EXPECT_EQ(table.iterations, dense.iterations);
        expect_as_accurate(table.out, dense.out, dense64.out, "forward");
        expect_as_accurate(table.centroids, dense.centroids, dense64.centroids, "centroids");
        expect_as_accurate(table.grad, dense.grad, dense64.grad, "gradient");
      }
    }
  }
}

TEST(TableEngine, EnforceZeroAndPruneThreshold) {
  auto w = bf16_valued({64, 64}, 3, false);
  w.masked_fill_(w.abs() < 0.005, 0.0);
  auto g = test::llm_like({64, 64}, 4) / 0.02;
  for (double prune : {0.0, 1e-7}) {
    auto o = DKMOptions(3).engine(Engine::kDense).enforce_zero(true).prune_threshold(prune).epsilon(0);
    auto c = functional::init_centroids(w, o);
    auto dense64 = run(w.to(at::kDouble), c.to(at::kDouble), g.to(at::kDouble), o);
    auto dense = run(w, c, g, o);
    auto table = run(w, c, g, DKMOptions(o).engine(Engine::kTable).table_fp32_as_bf16(true));
    expect_as_accurate(table.out, dense.out, dense64.out, "forward");
    expect_as_accurate(table.grad, dense.grad, dense64.grad, "gradient");
  }
}

TEST(TableEngine, SixteenBitWeights) {
  // both round to the 16-bit type at the end: compare at its precision
  for (auto dt : {at::kBFloat16, at::kHalf})
    test::expect_sixteen_bit_like_dense(dt, 5, DKMOptions(3).engine(Engine::kDense), Engine::kTable);
}

// Records what autograd saves (dtype and size), passing it through.
struct SavedLog : SavedTensorHooks {
  std::vector<std::pair<at::ScalarType, int64_t>> saved;
  std::any pack(const at::Tensor& t) override {
    saved.emplace_back(t.scalar_type(), t.numel());
    return t;
  }
  at::Tensor unpack(const std::any& p) override { return std::any_cast<at::Tensor>(p); }
};

// table_index_list (eDKM's explicit 16-bit index per weight, for the ablation's like-for-like
// rows): the same forward and centroids bitwise, the same gradient to the rounding of its sums;
// autograd saves an int16 tensor of one index per weight in place of the weight; it moves to
// host under the Offloader like any saved tensor.
TEST(TableEngine, ExplicitIndexListGivesTheSameResultAndIsSaved) {
  for (auto dt : {at::kBFloat16, at::kHalf, at::kFloat}) {
    for (int64_t bits : {3, 8}) {
      SCOPED_TRACE(std::string(c10::toString(dt)) + " bits " + std::to_string(bits));
      auto w = test::llm_like({96, 80}, 41, dt);
      auto g = test::llm_like({96, 80}, 42, dt) / 0.02;
      auto o = DKMOptions(bits).engine(Engine::kTable).table_fp32_as_bf16(dt == at::kFloat);
      auto c = functional::init_centroids(w, o);
      auto plain_log = std::make_shared<SavedLog>();
      test::Run plain;
      {
        SavedTensorHooksGuard guard(plain_log);
        plain = run(w, c, g, o);
      }
      auto log = std::make_shared<SavedLog>();
      test::Run listed;
      {
        SavedTensorHooksGuard guard(log);
        listed = run(w, c, g, DKMOptions(o).table_index_list(true));
      }
      EXPECT_TRUE(at::equal(listed.out, plain.out));
      EXPECT_TRUE(at::equal(listed.centroids, plain.centroids));
      EXPECT_EQ(listed.iterations, plain.iterations);
      EXPECT_LE(max_rel(listed.grad, plain.grad), dt == at::kFloat ? 1e-6 : 8e-3);
      const auto n = std::count(log->saved.begin(), log->saved.end(), std::make_pair(at::kShort, w.numel()));
      EXPECT_EQ(n, 1) << "one int16 index per weight saved";
      auto weight_sized = [&](const SavedLog& l) {
        return std::count(l.saved.begin(), l.saved.end(), std::make_pair(w.scalar_type(), w.numel()));
      };
      EXPECT_EQ(weight_sized(*log), weight_sized(*plain_log) - 1) << "the index list is saved in place of the weight";
    }
  }
  // Under the Offloader the index list goes to host (it is the one large saved tensor).
  auto w = test::llm_like({512, 512}, 43, at::kBFloat16);
  auto o = DKMOptions(3).engine(Engine::kTable).table_index_list(true);
  auto c = functional::init_centroids(w, o);
  auto off = std::make_shared<Offloader>(OffloadOptions().min_bytes(1024).host_to_host(true));
  {
    SavedTensorHooksGuard guard(off);
    run(w, c, test::llm_like({512, 512}, 44, at::kBFloat16), o);
  }
  EXPECT_GE(off->stats().bytes_stored, 512 * 512 * 2);
}

TEST(TableEngine, EngineNames) {
  EXPECT_EQ(to_string(Engine::kDense), "dense");
  EXPECT_EQ(to_string(Engine::kTable), "table");
  EXPECT_EQ(to_string(Engine::kStreaming), "streaming");
  EXPECT_EQ(to_string(Engine::kAuto), "auto");
}

TEST(TableEngine, AutoPicksTableWhenItCan) {
  auto w = test::llm_like({64, 64}, 8, at::kBFloat16);
  auto o = DKMOptions(2).engine(Engine::kAuto);
  auto c = functional::init_centroids(w, o);
  auto a = functional::dkm_cluster(w, c, o).weight;
  auto t = functional::dkm_cluster(w, c, DKMOptions(o).engine(Engine::kTable)).weight;
  EXPECT_TRUE(at::equal(a, t));
  auto og = DKMOptions(o).granularity(Granularity::kPerGroupedChannel).group_size(16);  // auto -> streaming
  auto cg = functional::init_centroids(w, og);
  EXPECT_TRUE(at::equal(functional::dkm_cluster(w, cg, og).weight,
                        functional::dkm_cluster(w, cg, DKMOptions(og).engine(Engine::kStreaming)).weight));
}

TEST(TableEngine, BadInputNamesEngineAndDtype) {
  auto w = test::llm_like({32, 32}, 9);
  auto o = DKMOptions(2).engine(Engine::kTable);
  auto c = functional::init_centroids(w, o);
  auto expect_error = [&](const at::Tensor& weight, const at::Tensor& cent, const DKMOptions& opts,
                          const std::string& what) {
    test::expect_error([&] { functional::dkm_cluster(weight, cent, opts); }, {"table engine", what});
  };
  expect_error(w, c, o, "float32");
  expect_error(w.to(at::kDouble), c, o, "Double");
  auto og = DKMOptions(o).granularity(Granularity::kPerGroupedChannel).group_size(8);
  expect_error(w.to(at::kBFloat16), functional::init_centroids(w, og), og, "per-tensor");
}

TEST(TableKernels, SharedMathMatchesC10Conversions) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const float h = c10::Half(bits, c10::Half::from_bits());
    const float k = kernels::fp16_bits_to_float(bits);
    if (std::isnan(h)) {
      EXPECT_TRUE(std::isnan(k));
      continue;
    }
    ASSERT_EQ(h, k) << "fp16 pattern " << b;
    ASSERT_EQ(kernels::float_to_fp16_bits(h), bits) << "fp16 round trip " << b;
  }
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0, 1);
  // Infinities, the largest finite values, and NaNs whose rounding carry used to reach the sign
  // bit (0x7FFFFFFF gave -0, 0xFFFFFFFF +0).
  for (uint32_t u : {0x7F800000u, 0xFF800000u, 0x7F7FFFFFu, 0xFF7FFFFFu, 0x7F800001u, 0x7FC00000u, 0xFFC00000u,
                     0x7FFF8000u, 0x7FFFFFFFu, 0xFFFF8000u, 0xFFFFFFFFu, 0x7F808000u}) {
    float f;
    std::memcpy(&f, &u, 4);
    ASSERT_EQ(kernels::bf16_round_bits(f), c10::BFloat16(f).x) << std::hex << u;
  }
  for (int i = 0; i < 100000; ++i) {
    const float f = n(rng) * (i % 7 == 0 ? 1e-6f : 0.05f);
    ASSERT_EQ(kernels::bf16_round_bits(f), c10::BFloat16(f).x) << f;
    ASSERT_EQ(kernels::float_to_fp16_bits(f), c10::Half(f).x) << f;
  }
}

TEST(TableKernels, CudaMatchesCpu) {
  EDKM_SKIP_WITHOUT_GPU();
  for (auto dt : {at::kBFloat16, at::kHalf}) {
    auto w = test::llm_like({512, 384}, 10, dt);
    auto g = test::llm_like({512, 384}, 11, dt);
    auto o = DKMOptions(3).engine(Engine::kTable);
    auto c = functional::init_centroids(w, o);
    auto cpu = run(w, c, g, o);
    auto gpu = run(w.cuda(), c.cuda(), g.cuda(), o);
    EXPECT_LT(max_rel(gpu.out.cpu(), cpu.out), 1e-2);
    EXPECT_LT(max_rel(gpu.grad.cpu(), cpu.grad), 2e-2);
    EXPECT_EQ(gpu.iterations, cpu.iterations);
  }
}

}  // namespace
}  // namespace edkm
