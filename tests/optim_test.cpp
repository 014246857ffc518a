// edkm::optim::AdamWBf16 (edkm/optim/adamw_bf16.h): AdamW with bf16 moments against LibTorch's AdamW (fp32
// moments), its state size, save / load for resuming, options through param groups, bad options.
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
