// edkm/nn/glu.h: fused GeGLU / SwiGLU equal the plain composition, keep less memory, and the
// feed-forward module.
#include <edkm/memory/memory.h>
#include <edkm/nn/glu.h>

#include "test_util.h"

namespace edkm {
namespace {

const GLUActivation kAll[] = {GLUActivation::kGELU, GLUActivation::kGELUTanh, GLUActivation::kSiLU};

struct ForwardBackward {
  at::Tensor y, dx;
};

ForwardBackward run(const at::Tensor& x0, const at::Tensor& grad, GLUActivation a, bool fused) {
  auto x = x0.clone().requires_grad_(true);
  auto y = fused ? functional::fused_glu(x, a) : functional::glu_reference(x, a);
  y.backward(grad);
  return {y.detach(), x.grad()};
}

TEST(FusedGLU, ForwardAndGradientEqualThePlainCompositionFp64) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  auto x = at::randn({3, 5, 2 * 24}, gen, opts) * 2;
  auto g = at::randn({3, 5, 24}, gen, opts);
  for (auto a : kAll) {
    auto fused = run(x, g, a, true), plain = run(x, g, a, false);
    EXPECT_LT(test::max_rel(fused.y, plain.y), 1e-14) << to_string(a);
    EXPECT_LT(test::max_rel(fused.dx, plain.dx), 1e-14) << to_string(a);
  }
}

TEST(FusedGLU, Fp32AndNonContiguousInput) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
  auto base = at::randn({2 * 16, 7}, gen, at::TensorOptions().dtype(at::kFloat));
  auto x = base.t();  // [7, 32], non-contiguous
  auto g = at::randn({7, 16}, gen, at::TensorOptions().dtype(at::kFloat));
  for (auto a : kAll) {
    auto fused = run(x, g, a, true), plain = run(x, g, a, false);
    EXPECT_LT(test::max_rel(fused.y, plain.y), 1e-6) << to_string(a);
    EXPECT_LT(test::max_rel(fused.dx, plain.dx), 1e-6) << to_string(a);
  }
  EXPECT_LT(test::max_rel(functional::swiglu(x), functional::glu_reference(x, GLUActivation::kSiLU)), 1e-6);
  EXPECT_LT(test::max_rel(functional::geglu(x, true), functional::glu_reference(x, GLUActivation::kGELUTanh)), 1e-6);
}

TEST(FusedGLU, KeepsOnlyItsOutputAfterForward) {
  // x exists before; after forward the plain form holds act(x2) and the product, the fused one
  // only the product.
  const int64_t rows = 64, h = 1024, out_bytes = rows * h * 4;
  auto x = at::randn({rows, 2 * h}).requires_grad_(true);
  for (auto a : kAll) {
    at::Tensor y;
    int64_t fused_bytes = 0, plain_bytes = 0;
    {
      MemoryMeter m;
      y = functional::fused_glu(x, a);
      fused_bytes = m.report().cpu.current_delta();
    }
    y = at::Tensor();
    {
      MemoryMeter m;
      y = functional::glu_reference(x, a);
      plain_bytes = m.report().cpu.current_delta();
    }
    EXPECT_EQ(fused_bytes, out_bytes) << to_string(a);
    EXPECT_EQ(plain_bytes, 2 * out_bytes) << to_string(a);
  }
}

TEST(FusedGLU, BackwardAllocatesOnlyTheInputGradient) {
  const int64_t rows = 64, h = 1024, out_bytes = rows * h * 4;
  auto g = at::randn({rows, h});
  for (auto a : kAll) {
    auto peak = [&](bool fused) {
      auto x = at::randn({rows, 2 * h}).requires_grad_(true);
      auto y = fused ? functional::fused_glu(x, a) : functional::glu_reference(x, a);
      MemoryMeter m;
      y.backward(g);
      return m.report().cpu.peak_delta();
    };
    EXPECT_EQ(peak(true), 2 * out_bytes) << to_string(a);  // dx, [rows, 2h], and nothing else
    EXPECT_GT(peak(false), 2 * out_bytes) << to_string(a);
  }
}

TEST(FusedGLU, ModuleAndFeedForwardEqualUnfused) {
  torch::manual_seed(3);
  GLUFeedForward ff(GLUFeedForwardOptions(16, 40).activation(GLUActivation::kGELU).bias(true));
  ff->to(at::kDouble);
  auto x = at::randn({4, 9, 16}, at::TensorOptions().dtype(at::kDouble)).requires_grad_(true);
  auto grads = [&](bool fused) {
    ff->options.fused(fused);
    ff->zero_grad();
    x.mutable_grad() = at::Tensor();
    auto y = ff(x);
    y.pow(2).sum().backward();
    std::vector<at::Tensor> out{y.detach(), x.grad().clone()};
    for (auto& p : ff->parameters()) out.push_back(p.grad().clone());
    return out;
  };
  auto fused = grads(true), plain = grads(false);
  ASSERT_EQ(fused.size(), plain.size());
  for (size_t i = 0; i < fused.size(); ++i) EXPECT_LT(test::max_rel(fused[i], plain[i]), 1e-13) << i;

  FusedGLU act(GLUActivation::kSiLU);
  auto u = at::randn({3, 8});
  EXPECT_TRUE(act(u).equal(functional::swiglu(u)));
  std::ostringstream s;
  s << *ff;
  EXPECT_NE(s.str().find("GLUFeedForward"), std::string::npos);
}

TEST(FusedGLU, BadInput) {
  test::expect_error([] { functional::swiglu(at::randn({3, 5})); }, {"even", "5"});
  test::expect_error([] { functional::geglu(at::ones({4}, at::kLong)); }, {"floating point"});
  test::expect_error([] { GLUFeedForward(GLUFeedForwardOptions(8, 0)); }, {"hidden", "positive"});
  GLUFeedForward ff(8, 16);
  test::expect_error([&] { ff(at::randn({2, 7})); }, {"d_model=8"});
}

}  // namespace
}  // namespace edkm
