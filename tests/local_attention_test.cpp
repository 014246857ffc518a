// edkm/nn/local_attention.h: blocked sliding-window attention equals full attention with a band
// mask (forward and gradients), for both directions, any block size; memory linear in n.
#include <edkm/memory/memory.h>
#include <edkm/nn/local_attention.h>

#include <cmath>
#include <limits>

#include "test_util.h"

namespace edkm {
namespace {

struct QKV {
  at::Tensor q, k, v;
};

QKV make_qkv(int64_t b, int64_t h, int64_t n, int64_t d, int64_t dv, uint64_t seed, at::ScalarType dtype) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto o = at::TensorOptions().dtype(dtype);
  return {at::randn({b, h, n, d}, gen, o), at::randn({b, h, n, d}, gen, o), at::randn({b, h, n, dv}, gen, o)};
}

std::vector<at::Tensor> out_and_grads(const QKV& in, const at::Tensor& grad,
                                      const std::function<at::Tensor(const QKV&)>& attn) {
  QKV x{in.q.clone().requires_grad_(true), in.k.clone().requires_grad_(true), in.v.clone().requires_grad_(true)};
  auto y = attn(x);
  y.backward(grad);
  return {y.detach(), x.q.grad(), x.k.grad(), x.v.grad()};
}

TEST(LocalAttention, BandMask) {
  auto m = functional::band_mask(5, 1, false);
  auto expected = at::tensor({1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1}).view({5, 5});
  EXPECT_TRUE(m.equal(expected.to(at::kBool)));
  auto c = functional::band_mask(5, 2, true);
  EXPECT_TRUE(c.equal(at::tril(at::ones({5, 5}, at::kBool)) & at::triu(at::ones({5, 5}, at::kBool), -2)));
}

TEST(LocalAttention, EqualsFullAttentionWithABandMaskFp64) {
  const int64_t n = 37;
  auto in = make_qkv(2, 3, n, 8, 5, 1, at::kDouble);
  auto grad = at::randn({2, 3, n, 5}, at::TensorOptions().dtype(at::kDouble));
  for (bool causal : {false, true})
    for (int64_t window : {1, 4, 16, 36, 100})
      for (int64_t block : {0, 1, 5, 64}) {
        auto opts = LocalAttentionFuncOptions(window).causal(causal).block_size(block);
        auto local =
            out_and_grads(in, grad, [&](const QKV& x) { return functional::local_attention(x.q, x.k, x.v, opts); });
        auto full = out_and_grads(in, grad, [&](const QKV& x) {
          return functional::masked_attention(x.q, x.k, x.v, functional::band_mask(n, window, causal));
        });
        for (size_t i = 0; i < 4; ++i)
          EXPECT_LT(test::max_rel(local[i], full[i]), 1e-12)
              << "causal " << causal << " window " << window << " block " << block << " tensor " << i;
      }
}

TEST(LocalAttention, Fp32ScaleAndTinySequences) {
  auto in = make_qkv(1, 2, 300, 16, 16, 2, at::kFloat);
  auto opts = LocalAttentionFuncOptions(20).causal(true).scale(0.3);
  auto local = functional::local_attention(in.q, in.k, in.v, opts);
  auto full = functional::masked_attention(in.q, in.k, in.v, functional::band_mask(300, 20, true), 0.3);
  EXPECT_LT(test::max_rel(local, full), 1e-5);
  for (int64_t n : {1, 2, 3}) {
    auto t = make_qkv(1, 1, n, 4, 4, 3, at::kDouble);
    auto l = functional::local_attention(t.q, t.k, t.v, LocalAttentionFuncOptions(1));
    auto f = functional::masked_attention(t.q, t.k, t.v, functional::band_mask(n, 1, false));
    EXPECT_LT(test::max_rel(l, f), 1e-14) << n;
  }
}

TEST(LocalAttention, CudaEqualsFullAttention) {
  EDKM_SKIP_WITHOUT_GPU();
  auto in = make_qkv(2, 2, 200, 32, 32, 7, at::kFloat);
  QKV g{in.q.cuda(), in.k.cuda(), in.v.cuda()};
  for (bool causal : {false, true}) {
    auto l = functional::local_attention(g.q, g.k, g.v, LocalAttentionFuncOptions(17).causal(causal));
    auto f = functional::masked_attention(g.q, g.k, g.v, functional::band_mask(200, 17, causal, at::kCUDA));
    EXPECT_TRUE(l.is_cuda());
    EXPECT_LT(test::max_rel(l, f), 1e-5) << causal;
  }
}

TEST(LocalAttention, MemoryIsLinearInSequenceLength) {
  at::NoGradGuard no_grad;
  auto peak = [](int64_t n, bool local) {
    auto in = make_qkv(1, 2, n, 16, 16, 4, at::kFloat);
    MemoryMeter m;
    auto y = local ? functional::local_attention(in.q, in.k, in.v, LocalAttentionFuncOptions(32))
                   : functional::masked_attention(in.q, in.k, in.v, functional::band_mask(n, 32, false));
    return m.report().cpu.peak_delta();
  };
  const int64_t l1 = peak(1024, true), l2 = peak(2048, true), f1 = peak(1024, false), f2 = peak(2048, false);
  EXPECT_LT(static_cast<double>(l2) / l1, 2.2);  // linear
  EXPECT_GT(static_cast<double>(f2) / f1, 3.5);  // quadratic
  EXPECT_LT(l2 * 8, f2);
}

TEST(LocalAttention, SelfAttentionModule) {
  torch::manual_seed(5);
  LocalSelfAttention attn(LocalSelfAttentionOptions(24, 3, 4).causal(true));
  auto x = at::randn({2, 10, 24});
  auto y = attn(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  // the same projections through full attention with the band mask
  auto qkv = attn->in_proj(x).view({2, 10, 3, 3, 8}).permute({2, 0, 3, 1, 4});
  auto ref = functional::masked_attention(qkv[0], qkv[1], qkv[2], functional::band_mask(10, 4, true));
  ref = attn->out_proj(ref.transpose(1, 2).reshape({2, 10, 24}));
  EXPECT_LT(test::max_rel(y, ref), 1e-5);
  // causal: the first output does not depend on later positions
  auto x2 = x.clone();
  x2.narrow(1, 5, 5).add_(1.0);
  EXPECT_TRUE(attn(x2).narrow(1, 0, 5).allclose(y.narrow(1, 0, 5), 1e-5, 1e-6));
}

TEST(LocalAttention, BadInput) {
  auto in = make_qkv(1, 2, 8, 4, 4, 6, at::kFloat);
  test::expect_error([&] { functional::local_attention(in.q, in.k, in.v, LocalAttentionFuncOptions(0)); },
                     {"window must be positive", "0"});
  test::expect_error([&] { functional::local_attention(in.q, in.k, in.v, LocalAttentionFuncOptions(-3)); }, {"window"});
  test::expect_error(
      [&] { functional::local_attention(in.q, in.k.narrow(2, 0, 7), in.v, LocalAttentionFuncOptions(2)); },
      {"k must have q's shape"});
  test::expect_error([&] { functional::local_attention(in.q, in.k, in.v[0], LocalAttentionFuncOptions(2)); },
                     {"v must be"});
  test::expect_error([&] { functional::local_attention(in.q[0], in.k[0], in.v[0], LocalAttentionFuncOptions(2)); },
                     {"[batch, heads, n, head_dim]"});
  test::expect_error(
      [&] { functional::local_attention(in.q, in.k.to(at::kDouble), in.v, LocalAttentionFuncOptions(2)); }, {"dtype"});
  test::expect_error([] { LocalSelfAttention(LocalSelfAttentionOptions(10, 3, 4)); }, {"divisible"});
  test::expect_error([] { functional::band_mask(4, 0, true); }, {"window"});
  for (double bad : {std::nan(""), -1.0, std::numeric_limits<double>::infinity()})
    test::expect_error([&] { functional::local_attention(in.q, in.k, in.v, LocalAttentionFuncOptions(2).scale(bad)); },
                       {"scale must be positive and finite"});
}

}  // namespace
}  // namespace edkm
