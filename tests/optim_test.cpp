// edkm::optim::AdamWBf16 (edkm/optim/adamw_bf16.h): AdamW with bf16 moments against LibTorch's AdamW (fp32
// moments), its state size, save / load for resuming, options through param groups, bad options, the
// stochastic rounding of its bf16 state.
#include <edkm/optim/adamw_bf16.h>
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include <sstream>

#include "test_util.h"

namespace {

using edkm::optim::AdamWBf16;
using edkm::optim::AdamWBf16Options;

// Gradient of a fixed quadratic 0.5 |A p - b|^2 at p.
at::Tensor quad_grad(const at::Tensor& p, const at::Tensor& a, const at::Tensor& b) {
  return at::matmul(a.t(), at::matmul(a, p) - b);
}

TEST(AdamWBf16, FollowsTorchAdamWWithinBf16MomentRounding) {
  at::manual_seed(3);
  const auto a = at::randn({48, 32}), b = at::randn({48});
  auto p1 = at::randn({32}).requires_grad_(true);
  auto p2 = p1.detach().clone().requires_grad_(true);
  const auto start = p1.detach().clone();
  torch::optim::AdamW ref({p1}, torch::optim::AdamWOptions(1e-2).weight_decay(0.05));
  AdamWBf16 opt({p2}, AdamWBf16Options(1e-2).weight_decay(0.05));
  for (int step = 0; step < 50; ++step) {
    p1.mutable_grad() = quad_grad(p1.detach(), a, b);
    p2.mutable_grad() = quad_grad(p2.detach(), a, b);
    ref.step();
    opt.step();
  }
  // bf16 moments carry ~3 significant digits: the trajectories stay within a few 1e-3 relative.
  EXPECT_LT(edkm::test::max_rel(p2, p1), 1e-2);
  EXPECT_GT((p2 - p1).abs().max().item<double>(), 0.0);  // and they are not the same optimizer
  // Both descend the quadratic.
  const auto loss = [&](const at::Tensor& p) { return (at::matmul(a, p) - b).pow(2).sum().item<double>(); };
  EXPECT_LT(loss(p2.detach()), 0.5 * loss(start));
}

TEST(AdamWBf16, KeepsFourBytesOfStatePerParameter) {
  auto w = at::randn({64, 16}).requires_grad_(true);
  AdamWBf16 opt({w}, AdamWBf16Options(1e-3));
  w.mutable_grad() = at::randn({64, 16});
  opt.step();
  const auto& st = static_cast<const edkm::optim::AdamWBf16ParamState&>(*opt.state().at(w.unsafeGetTensorImpl()));
  EXPECT_EQ(st.step(), 1);
  EXPECT_EQ(st.exp_avg().scalar_type(), at::kBFloat16);
  EXPECT_EQ(st.exp_avg_sq().scalar_type(), at::kBFloat16);
  const int64_t bytes = st.exp_avg().nbytes() + st.exp_avg_sq().nbytes();
  EXPECT_EQ(bytes, AdamWBf16::kStateBytesPerParam * w.numel());
}

// Saving after k steps and loading into a fresh optimizer continues exactly as the original.
TEST(AdamWBf16, SaveAndLoadResumeBitwise) {
  at::manual_seed(5);
  const auto a = at::randn({24, 16}), b = at::randn({24});
  auto p = at::randn({16}).requires_grad_(true);
  AdamWBf16 opt({p}, AdamWBf16Options(5e-2).weight_decay(0.01));
  for (int i = 0; i < 5; ++i) {
    p.mutable_grad() = quad_grad(p.detach(), a, b);
    opt.step();
  }
  std::stringstream saved;
  torch::save(opt, saved);
  auto q = p.detach().clone().requires_grad_(true);
  AdamWBf16 resumed({q}, AdamWBf16Options(123.0));  // lr comes back from the saved param group
  torch::load(resumed, saved);
  EXPECT_DOUBLE_EQ(resumed.param_groups()[0].options().get_lr(), 5e-2);
  for (int i = 0; i < 5; ++i) {
    p.mutable_grad() = quad_grad(p.detach(), a, b);
    q.mutable_grad() = quad_grad(q.detach(), a, b);
    opt.step();
    resumed.step();
  }
  EXPECT_TRUE(at::equal(p, q));
}

// Param groups with their own options; bf16 and non-contiguous parameters; a closure; set_lr.
TEST(AdamWBf16, ParamGroupsBf16NonContiguousAndClosure) {
  auto w = at::randn({8, 6}).to(at::kBFloat16).requires_grad_(true);
  auto u = at::randn({6, 8}).t().detach().requires_grad_(true);  // a non-contiguous leaf
  ASSERT_FALSE(u.is_contiguous());
  std::vector<torch::optim::OptimizerParamGroup> groups{
      torch::optim::OptimizerParamGroup({w}, std::make_unique<AdamWBf16Options>(AdamWBf16Options(1e-2))),
      torch::optim::OptimizerParamGroup({u}, std::make_unique<AdamWBf16Options>(AdamWBf16Options(0.0)))};
  AdamWBf16 opt(groups, AdamWBf16Options(1e-3));
  const auto w0 = w.detach().clone(), u0 = u.detach().clone();
  auto loss = opt.step([&] {
    opt.zero_grad();
    auto l = (w.to(at::kFloat).sum() + u.pow(2).sum());
    l.backward();
    return l;
  });
  EXPECT_TRUE(loss.defined());
  EXPECT_FALSE(at::equal(w, w0));  // lr 1e-2 moved the bf16 weights
  EXPECT_TRUE(at::equal(u, u0));   // lr 0: unchanged
  EXPECT_EQ(w.scalar_type(), at::kBFloat16);
  for (auto& g : opt.param_groups()) g.options().set_lr(0.5);
  EXPECT_DOUBLE_EQ(opt.param_groups()[1].options().get_lr(), 0.5);
  u.mutable_grad() = at::ones_like(u);
  opt.step();
  EXPECT_FALSE(at::equal(u, u0));
  EXPECT_FALSE(u.is_contiguous());  // updated in place, layout kept
}

TEST(AdamWBf16, BadOptionsAreNamed) {
  auto p = at::randn({4}).requires_grad_(true);
  edkm::test::expect_error([&] { AdamWBf16({p}, AdamWBf16Options(-1.0)); }, {"lr must be >= 0"});
  edkm::test::expect_error([&] { AdamWBf16({p}, AdamWBf16Options(1e-3).betas({0.9, 1.0})); }, {"betas[1]"});
  edkm::test::expect_error([&] { AdamWBf16({p}, AdamWBf16Options(1e-3).eps(-1)); }, {"eps must be >= 0"});
  edkm::test::expect_error([&] { AdamWBf16({p}, AdamWBf16Options(1e-3).weight_decay(-0.1)); },
                           {"weight_decay must be >= 0"});
}

}  // namespace

namespace {

// The stochastic rounding: unbiased, deterministic in (seed, offset), the same bits on the loop and
// the tensor-op paths, non-finite values as to(kBFloat16).
TEST(AdamWBf16, StochasticRoundingIsUnbiasedDeterministicAndTheSameOnBothPaths) {
  using edkm::optim::to_bf16_stochastic;
  // 1 + 0.3 ulp and -(4 + 0.7 ulp) (bf16 spacing 2^-7 at 1, 2^-5 at 4): rounds up 30% / 70% of the time.
  const float a = 1.0f + 0.3f * 0.0078125f, b = -(4.0f + 0.7f * 0.03125f);
  const auto x = at::cat({at::full({200000}, a), at::full({200000}, b)});
  const auto r = to_bf16_stochastic(x, 7).to(at::kDouble);
  EXPECT_NEAR(r.narrow(0, 0, 200000).mean().item<double>(), a, 0.01 * 0.0078125);
  EXPECT_NEAR(r.narrow(0, 200000, 200000).mean().item<double>(), b, 0.01 * 0.03125);
  const double up = (r.narrow(0, 0, 200000) > 1.0).to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(up, 0.3, 0.01);
  // Only the two neighbours.
  EXPECT_TRUE(((r.narrow(0, 0, 200000) == 1.0) | (r.narrow(0, 0, 200000) == 1.0078125)).all().item<bool>());
  // Deterministic; another seed or offset draws other bits.
  EXPECT_TRUE(at::equal(to_bf16_stochastic(x, 7), to_bf16_stochastic(x, 7)));
  EXPECT_FALSE(at::equal(to_bf16_stochastic(x, 7), to_bf16_stochastic(x, 8)));
  EXPECT_TRUE(
      at::equal(to_bf16_stochastic(x.narrow(0, 1000, 5000), 7, 1000), to_bf16_stochastic(x, 7).narrow(0, 1000, 5000)));
  // The tensor-op path (a non-contiguous input) gives the loop's bits, offsets past 2^31 included.
  const auto m = at::randn({300, 217}) * 1e-3;
  for (const int64_t off : {int64_t{0}, int64_t{5} << 31}) {
    const auto via_ops = to_bf16_stochastic(m.t(), 11, off);
    ASSERT_FALSE(m.t().is_contiguous());
    EXPECT_TRUE(at::equal(via_ops.view(at::kShort), to_bf16_stochastic(m.t().contiguous(), 11, off).view(at::kShort)));
  }
  // Non-finite values and exact bf16 values are kept.
  const auto special = at::tensor({std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                                   std::numeric_limits<float>::quiet_NaN(), 0.0f, -2.0f, 3.0e38f});
  for (const bool contiguous : {true, false}) {
    const auto in = contiguous ? special : special.view({1, 6}).t().t().expand({2, 6}).select(0, 1);
    const auto out = to_bf16_stochastic(in, 3).to(at::kFloat);
    EXPECT_TRUE(std::isinf(out[0].item<float>()) && out[0].item<float>() > 0);
    EXPECT_TRUE(std::isinf(out[1].item<float>()) && out[1].item<float>() < 0);
    EXPECT_TRUE(std::isnan(out[2].item<float>()));
    EXPECT_EQ(out[3].item<float>(), 0.0f);
    EXPECT_EQ(out[4].item<float>(), -2.0f);
  }
  edkm::test::expect_error([] { to_bf16_stochastic(at::ones({2}, at::kDouble), 0); }, {"fp32"});
}

// Rounded to nearest, bf16 moments stall: beta2 = 0.999 moves v by 0.1% per step, under half a bf16
// ulp, so v never decays (and drifts up). Against LibTorch's AdamW (fp32 moments) on the same
// gradients: 3,000 steps of N(0, 1) gradients, then 2,000 of N(0, 0.1^2).
TEST(AdamWBf16, SecondMomentTracksFp32AdamWWhenGradientsShrink) {
  at::manual_seed(9);
  auto p1 = at::zeros({4096}).requires_grad_(true);
  auto p2 = at::zeros({4096}).requires_grad_(true);
  torch::optim::AdamW ref({p1}, torch::optim::AdamWOptions(0.0).weight_decay(0.0));
  AdamWBf16 opt({p2}, AdamWBf16Options(0.0).weight_decay(0.0));
  auto second_moment = [&] {
    const auto& r = static_cast<const torch::optim::AdamWParamState&>(*ref.state().at(p1.unsafeGetTensorImpl()));
    const auto& o = static_cast<const edkm::optim::AdamWBf16ParamState&>(*opt.state().at(p2.unsafeGetTensorImpl()));
    return std::make_pair(r.exp_avg_sq().mean().item<double>(), o.exp_avg_sq().to(at::kDouble).mean().item<double>());
  };
  for (int step = 1; step <= 5000; ++step) {
    const auto g = at::randn({4096}) * (step <= 3000 ? 1.0 : 0.1);
    p1.mutable_grad() = g;
    p2.mutable_grad() = g.clone();
    ref.step();
    opt.step();
    if (step == 3000 || step == 5000) {
      const auto [v32, v16] = second_moment();
      EXPECT_NEAR(v16 / v32, 1.0, 0.02) << "step " << step << ": fp32 " << v32 << ", bf16 " << v16;
    }
  }
}

}  // namespace
