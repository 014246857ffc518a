// edkm/nn/distill.h: the losses equal PyTorch's formulations; the teacher never enters autograd.
#include <ATen/ops/isfinite.h>
#include <ATen/ops/kl_div.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/softmax.h>
#include <edkm/memory/memory.h>
#include <edkm/models/llama.h>
#include <edkm/nn/distill.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <cmath>
#include <iostream>
#include <limits>

#include "kernels/cpu/head_loss_kernel.h"
#include "test_util.h"

namespace edkm {
namespace {

TEST(Distill, KlLossEqualsKlDivBatchmeanTimesTSquared) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const auto o = at::TensorOptions().dtype(at::kDouble);
  auto s0 = at::randn({4, 3, 11}, gen, o) * 3, t = at::randn({4, 3, 11}, gen, o) * 3;
  for (double T : {1.0, 2.0, 4.5}) {
    auto s = s0.clone().requires_grad_(true), s_ref = s0.clone().requires_grad_(true);
    auto loss = functional::distillation_kl_loss(s, t, T);
    auto ref = at::kl_div(at::log_softmax(s_ref / T, -1), at::log_softmax(t / T, -1), at::Reduction::Sum,
                          /*log_target=*/true) /
               12.0 * (T * T);
    EXPECT_LT(test::max_rel(loss, ref), 1e-14) << T;
    loss.backward();
    ref.backward();
    EXPECT_LT(test::max_rel(s.grad(), s_ref.grad()), 1e-13) << T;
  }
  // zero when the distributions agree, positive otherwise
  EXPECT_NEAR(functional::distillation_kl_loss(t, t, 2.0).item<double>(), 0.0, 1e-14);
  EXPECT_GT(functional::distillation_kl_loss(s0, t, 2.0).item<double>(), 0.0);
}

// bf16 logits of close distributions over a large vocabulary: in bf16 the log-probabilities'
// rounding made the KL 5% off and its gradient 20%; computed in fp32, as the fp64 KL of the same
// bf16 values.
TEST(Distill, Bf16LogitsGiveTheKlOfTheirValues) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
  const auto t = (at::randn({16, 49152}, gen) * 3).to(at::kBFloat16);
  const auto s0 = (t.to(at::kFloat) + at::randn({16, 49152}, gen) * 0.1).to(at::kBFloat16);
  auto s = s0.clone().requires_grad_(true), s64 = s0.to(at::kDouble).requires_grad_(true);
  const auto loss = functional::distillation_kl_loss(s, t, 2.0);
  const auto ref = functional::distillation_kl_loss(s64, t.to(at::kDouble), 2.0);
  EXPECT_EQ(loss.scalar_type(), at::kFloat);
  EXPECT_LT(test::max_rel(loss, ref), 1e-4);
  loss.backward();
  ref.backward();
  EXPECT_EQ(s.grad().scalar_type(), at::kBFloat16);
  EXPECT_LT(test::max_rel(s.grad(), s64.grad()), 1e-2);  // the gradient's own bf16 rounding
  const auto h = at::randn({4, 64}, gen).to(at::kBFloat16), h2 = (h.to(at::kFloat) + 0.01).to(at::kBFloat16);
  EXPECT_EQ(functional::hidden_state_mse_loss(h2, h).scalar_type(), at::kFloat);
  EXPECT_LT(test::max_rel(functional::hidden_state_mse_loss(h2, h),
                          functional::hidden_state_mse_loss(h2.to(at::kDouble), h.to(at::kDouble))),
            1e-5);
}

TEST(Distill, HiddenMseEqualsMseLoss) {
  auto s = at::randn({2, 5, 8}, at::kDouble).requires_grad_(true);
  auto t = at::randn({2, 5, 8}, at::kDouble).requires_grad_(true);
  auto l = functional::hidden_state_mse_loss(s, t);
  EXPECT_LT(test::max_rel(l, (s - t).pow(2).mean()), 1e-14);
  l.backward();
  EXPECT_FALSE(t.grad().defined());  // teacher side is a constant
  EXPECT_LT(test::max_rel(s.grad(), 2 * (s - t).detach() / s.numel()), 1e-14);
}

TEST(Distill, DistillerRunsTheTeacherWithoutAutograd) {
  torch::manual_seed(2);
  torch::nn::Sequential teacher(torch::nn::Linear(6, 32), torch::nn::ReLU(), torch::nn::Linear(32, 5));
  torch::nn::Linear student(6, 5);
  auto distill = make_distiller(teacher, student, DistillerOptions().temperature(3).alpha(0.7));
  EXPECT_FALSE(teacher->is_training());
  auto x = at::randn({8, 6});
  auto labels = at::randint(0, 5, {8}, at::kLong);
  auto out = distill.step(x, labels);
  for (const auto& t : out.teacher_outputs) {
    EXPECT_FALSE(t.requires_grad());
    EXPECT_FALSE(t.grad_fn());
  }
  out.loss.backward();
  for (const auto& p : teacher->parameters()) EXPECT_FALSE(p.grad().defined());
  for (const auto& p : student->parameters()) EXPECT_TRUE(p.grad().defined());

  // the plain formulation, by hand
  auto t_logits = teacher->forward(x).detach();
  auto s_logits = student->forward(x);
  auto kl = at::kl_div(at::log_softmax(s_logits / 3, -1), at::log_softmax(t_logits / 3, -1), at::Reduction::Sum, true) /
            8.0 * 9.0;
  auto ce = at::cross_entropy_loss(s_logits, labels);
  EXPECT_LT(test::max_rel(out.loss, 0.7 * kl + 0.3 * ce), 1e-6);
  EXPECT_LT(test::max_rel(out.ce_loss, ce), 1e-6);
}

TEST(Distill, HiddenStatesAndTeacherKeepsNoActivations) {
  torch::manual_seed(3);
  torch::nn::Linear t1(16, 256), t2(256, 16), s1(16, 256), s2(256, 16);
  auto fwd = [](torch::nn::Linear a, torch::nn::Linear b) {
    return [a, b](const at::Tensor& x) mutable {
      auto h = at::relu(a(x));
      return std::vector<at::Tensor>{b(h), h};
    };
  };
  Distiller d(fwd(t1, t2), fwd(s1, s2), DistillerOptions().hidden_weight(0.5));
  auto x = at::randn({64, 16});
  auto out = d.step(x);
  auto s = fwd(s1, s2)(x);
  auto expected = functional::distillation_kl_loss(s[0], out.teacher_outputs[0], 2.0) +
                  0.5 * (s[1] - out.teacher_outputs[1]).pow(2).mean();
  EXPECT_LT(test::max_rel(out.loss, expected), 1e-6);
  EXPECT_FALSE(out.ce_loss.defined());
  // the teacher's forward leaves only its outputs alive (no saved activations)
  MemoryMeter m;
  auto outs = d.teacher_forward(x);
  EXPECT_EQ(m.report().cpu.current_delta(), (64 * 16 + 64 * 256) * 4);
}

TEST(Distill, BadInput) {
  auto a = at::randn({2, 5}), b = at::randn({2, 4});
  test::expect_error([&] { functional::distillation_kl_loss(a, b, 2.0); }, {"one shape"});
  test::expect_error([&] { functional::distillation_kl_loss(a, a, 0.0); }, {"temperature must be positive"});
  test::expect_error([&] { functional::hidden_state_mse_loss(a, b); }, {"one shape"});
  auto f = [](const at::Tensor& x) { return std::vector<at::Tensor>{x}; };
  test::expect_error([&] { Distiller(f, f, DistillerOptions().alpha(1.5)); }, {"alpha", "[0, 1]"});
  test::expect_error([&] { Distiller(f, f, DistillerOptions().temperature(-1)); }, {"temperature"});
  test::expect_error([&] { Distiller(f, f).step(a, at::zeros({3}, at::kLong)); }, {"labels"});
  test::expect_error([&] { Distiller(f, f, DistillerOptions().hidden_weight(1)).step(a); }, {"hidden states"});
  const double inf = std::numeric_limits<double>::infinity();
  test::expect_error([&] { functional::distillation_kl_loss(a, a, inf); }, {"temperature", "finite"});
  test::expect_error([&] { Distiller(f, f, DistillerOptions().temperature(inf)); }, {"temperature", "finite"});
  test::expect_error([&] { Distiller(f, f).step(a, at::tensor({0.9, 2.7})); }, {"labels", "integer"});
  auto two = [](const at::Tensor& x) { return std::vector<at::Tensor>{x, x}; };
  auto three = [](const at::Tensor& x) { return std::vector<at::Tensor>{x, x, x}; };
  test::expect_error([&] { Distiller(three, two, DistillerOptions().hidden_weight(1)).step(a); },
                     {"student returned 2 outputs", "teacher 3"});
}

// A teacher logit of -inf (a masked class) has probability 0 and adds 0 (0 log 0 = 0), as in
// at::kl_div; the gradient stays finite.
TEST(Distill, MaskedTeacherClassesAddNothing) {
  const double inf = std::numeric_limits<double>::infinity();
  auto s = at::tensor({0.0, 1.0, 1.0, 0.5, -0.5, 2.0}, at::kDouble).view({2, 3}).requires_grad_(true);
  auto t = at::tensor({0.0, -inf, 1.0, -inf, 0.3, -inf}, at::kDouble).view({2, 3});
  const auto loss = functional::distillation_kl_loss(s, t, 2.0);
  const auto want = at::kl_div(at::log_softmax(s / 2.0, -1), at::softmax(t / 2.0, -1), at::Reduction::Sum) * 4.0 / 2;
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  EXPECT_NEAR(loss.item<double>(), want.item<double>(), 1e-12);
  loss.backward();
  EXPECT_TRUE(at::isfinite(s.grad()).all().item<bool>());
  auto s2 = s.detach().clone().requires_grad_(true);
  (at::kl_div(at::log_softmax(s2 / 2.0, -1), at::softmax(t / 2.0, -1), at::Reduction::Sum) * 4.0 / 2).backward();
  EXPECT_TRUE(at::allclose(s.grad(), s2.grad(), 1e-12, 1e-12));
}

// lm_head_loss equals the head + causal_lm_loss (+ distillation_kl_loss) it fuses: loss and both
// gradients, against the unfused losses in fp64, for chunks that split sequences anywhere.
struct HeadCase {
  at::Tensor h, w, tok, th, tw;
};
HeadCase head_case(int64_t B, int64_t S, int64_t D, int64_t V, uint64_t seed) {
  at::manual_seed(seed);
  HeadCase c;
  c.h = at::randn({B, S, D});
  c.w = at::randn({V, D}) * 0.3;
  c.tok = at::randint(V, {B, S}, at::kLong);
  c.th = c.h + 0.3 * at::randn({B, S, D});
  c.tw = c.w + 0.1 * at::randn({V, D});
  return c;
}

// Every CPU build of the fused element-wise rows (kernels/cpu/head_loss_kernel.h: AVX-512, AVX2)
// and the ATen form (kNone) this machine has, each held to the fp64 reference.
std::vector<kernels::HeadLossIsa> head_loss_builds() {
  std::vector<kernels::HeadLossIsa> out;
  const auto best = kernels::head_loss_isa();
  for (auto isa : {kernels::HeadLossIsa::kNone, kernels::HeadLossIsa::kAvx2, kernels::HeadLossIsa::kAvx512})
    if (isa <= best) out.push_back(isa);
  return out;
}

struct HeadLossIsaScope {
  kernels::HeadLossIsa saved = kernels::head_loss_isa();
  explicit HeadLossIsaScope(kernels::HeadLossIsa isa) { kernels::set_head_loss_isa(isa); }
  ~HeadLossIsaScope() { kernels::set_head_loss_isa(saved); }
};

// lm_head_loss against the unfused losses in fp64, on each build: the loss within loss_tol and both
// gradients within grad_tol (relative).
void expect_head_loss_equals_fp64(const HeadCase& c, bool teacher, double alpha, double T, int64_t chunk,
                                  double loss_tol, double grad_tol) {
  auto h64 = c.h.to(at::kDouble).requires_grad_(true), w64 = c.w.to(at::kDouble).requires_grad_(true);
  const auto logits = at::linear(h64, w64);
  at::Tensor ref = functional::causal_lm_loss(logits, c.tok);
  if (teacher) {
    const auto t = at::linear(c.th.to(at::kDouble), c.tw.to(at::kDouble));
    ref = alpha * functional::distillation_kl_loss(logits, t, T) + (1 - alpha) * ref;
  }
  ref.backward();
  for (auto isa : head_loss_builds()) {
    SCOPED_TRACE("build " + kernels::to_string(isa) + " teacher " + std::to_string(teacher) + " alpha " +
                 std::to_string(alpha) + " T " + std::to_string(T) + " chunk " + std::to_string(chunk));
    HeadLossIsaScope scope(isa);
    auto h = c.h.clone().requires_grad_(true), w = c.w.clone().requires_grad_(true);
    const auto o = LmHeadLossOptions().chunk(chunk).alpha(alpha).temperature(T);
    const auto loss = teacher ? functional::lm_head_loss(h, w, c.tok, c.th, c.tw, o)
                              : functional::lm_head_loss(h, w, c.tok, {}, {}, o);
    EXPECT_EQ(loss.scalar_type(), at::kFloat);
    EXPECT_NEAR(loss.item<double>(), ref.item<double>(), loss_tol * std::abs(ref.item<double>()));
    (loss * 3.0).backward();  // the incoming gradient scales both
    EXPECT_LT(test::max_rel(h.grad().to(at::kDouble), 3.0 * h64.grad()), grad_tol);
    EXPECT_LT(test::max_rel(w.grad().to(at::kDouble), 3.0 * w64.grad()), grad_tol);
  }
}

TEST(LmHeadLoss, EqualsTheUnfusedLossesAndGradients) {
  const auto c = head_case(3, 7, 16, 50, 1);
  for (bool teacher : {false, true})
    for (double alpha : {0.0, 0.3, 1.0})
      for (double T : {1.0, 2.0, 3.5}) {  // 1 and 2 take the fused rows' shortcuts, 3.5 their general form
        if (!teacher && (alpha != 0.0 || T != 1.0)) continue;
        // At T 3.5 the KL of these close distributions is 0.14, and the ATen form's fp32 terms
        // p (log p - log q) come within 2.3e-6 of it (the fused rows' fp64 sums within 2e-7).
        const double loss_tol = T == 3.5 ? 4e-6 : 2e-6;
        for (int64_t chunk : {1, 4, 7, 10, 21, 1000})
          expect_head_loss_equals_fp64(c, teacher, alpha, T, chunk, loss_tol, 1e-5);
      }
}

// A vocabulary past the fused rows' 1,024-logit fp32 blocks (2,100 = 131 x 16 + 4: a tail), and
// logits large enough that most softmax terms fall below e^-87 (flushed to 0).
TEST(LmHeadLoss, FusedRowsAtLargeVocabulariesAndLogits) {
  for (double scale : {1.0, 40.0}) {
    auto c = head_case(2, 5, 24, 2100, 4);
    c.w = c.w * scale;
    c.tw = c.tw * scale;
    SCOPED_TRACE("logit scale " + std::to_string(scale));
    for (double alpha : {0.0, 0.5, 1.0})
      for (double T : {1.0, 2.0, 3.5}) expect_head_loss_equals_fp64(c, true, alpha, T, 4, 2e-6, 1e-5);
  }
}

// gradient_matmul_dtype: the same loss (the forward is fp32 either way); the gradients within bf16 /
// fp16 rounding of the fp32 option's.
TEST(LmHeadLoss, GradientMatmulsIn16Bits) {
  const auto c = head_case(2, 9, 32, 9000, 5);  // past one 8,192-row block of the head
  auto run = [&](at::ScalarType dtype) {
    auto h = c.h.clone().requires_grad_(true), w = c.w.clone().requires_grad_(true);
    const auto o = LmHeadLossOptions().chunk(7).gradient_matmul_dtype(dtype);
    const auto loss = functional::lm_head_loss(h, w, c.tok, c.th, c.tw, o);
    loss.backward();
    return std::vector<at::Tensor>{loss, h.grad(), w.grad()};
  };
  const auto f = run(at::kFloat);
  for (auto dtype : {at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(c10::toString(dtype));
    const auto l = run(dtype);
    EXPECT_EQ(l[0].item<float>(), f[0].item<float>());
    EXPECT_EQ(l[1].scalar_type(), at::kFloat);
    const double tol = dtype == at::kBFloat16 ? 2e-2 : 3e-3;
    EXPECT_LT(test::max_rel(l[1], f[1]), tol);
    EXPECT_LT(test::max_rel(l[2], f[2]), tol);
    EXPECT_GT(test::max_rel(l[1], f[1]), 0.0);  // the products did run in 16 bits
  }
  EXPECT_THROW(LmHeadLossOptions().gradient_matmul_dtype(at::kDouble).validate(), c10::Error);
}

// logits_matmul_dtype: the logits of both heads from 16-bit products (rounded to 16 bits), the rest as
// before: the loss and gradients within that rounding of the fp32 option's, a 16-bit teacher head
// multiplied without conversion.
TEST(LmHeadLoss, LogitMatmulsIn16Bits) {
  const auto c = head_case(2, 9, 32, 9000, 7);
  auto run = [&](at::ScalarType dtype, const at::Tensor& tw) {
    auto h = c.h.clone().requires_grad_(true), w = c.w.clone().requires_grad_(true);
    const auto o = LmHeadLossOptions().chunk(7).logits_matmul_dtype(dtype);
    const auto loss = functional::lm_head_loss(h, w, c.tok, c.th, tw, o);
    loss.backward();
    return std::vector<at::Tensor>{loss, h.grad(), w.grad()};
  };
  const auto f = run(at::kFloat, c.tw);
  for (const auto& tw : {c.tw, c.tw.to(at::kBFloat16)}) {
    const auto l = run(at::kBFloat16, tw);
    SCOPED_TRACE(c10::toString(tw.scalar_type()));
    EXPECT_NE(l[0].item<float>(), f[0].item<float>());  // the products did run in bf16
    EXPECT_NEAR(l[0].item<double>(), f[0].item<double>(), 1e-2 * std::abs(f[0].item<double>()));
    EXPECT_LT(test::max_rel(l[1], f[1]), 5e-2);
    EXPECT_LT(test::max_rel(l[2], f[2]), 5e-2);
  }
  // A bf16 head with both matmuls in bf16 (no fp32 copy of the head is made): its gradient in bf16.
  auto h = c.h.clone().requires_grad_(true), wb = c.w.to(at::kBFloat16).requires_grad_(true);
  const auto both =
      LmHeadLossOptions().chunk(7).logits_matmul_dtype(at::kBFloat16).gradient_matmul_dtype(at::kBFloat16);
  const auto lb = functional::lm_head_loss(h, wb, c.tok, c.th, c.tw.to(at::kBFloat16), both);
  lb.backward();
  EXPECT_NEAR(lb.item<double>(), f[0].item<double>(), 1e-2 * std::abs(f[0].item<double>()));
  EXPECT_EQ(wb.grad().scalar_type(), at::kBFloat16);
  EXPECT_LT(test::max_rel(wb.grad(), f[2]), 5e-2);
  EXPECT_LT(test::max_rel(h.grad(), f[1]), 5e-2);
  EXPECT_THROW(LmHeadLossOptions().logits_matmul_dtype(at::kInt).validate(), c10::Error);
}

// On a GPU the ATen form runs (the fused rows are CPU code): the same loss and gradients as the CPU's
// fused rows, with fp32 and bf16 gradient matmuls and a padded batch.
TEST(LmHeadLoss, CudaEqualsTheCpu) {
  EDKM_SKIP_WITHOUT_GPU();
  const auto c = head_case(2, 9, 32, 9000, 6);
  auto mask = at::ones({2, 9}, at::kLong);
  mask[1].narrow(0, 6, 3).zero_();  // the second sequence padded after 6 tokens
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    std::vector<at::Tensor> out[2];
    for (int gpu = 0; gpu < 2; ++gpu) {
      const auto dev = gpu ? at::Device(at::kCUDA) : at::Device(at::kCPU);
      // Fresh leaves each time: to(kCPU) returns the case's own tensor, which must not collect gradients.
      auto h = c.h.to(dev).detach().requires_grad_(true), w = c.w.to(dev).detach().requires_grad_(true);
      const auto o = LmHeadLossOptions().chunk(7).gradient_matmul_dtype(dtype);
      const auto loss = functional::lm_head_loss(h, w, c.tok.to(dev), c.th.to(dev), c.tw.to(dev), o, mask.to(dev));
      loss.backward();
      EXPECT_EQ(loss.device().type(), dev.type());  // "cuda:0" where dev is "cuda"
      out[gpu] = {loss.cpu(), h.grad().cpu(), w.grad().cpu()};
    }
    EXPECT_NEAR(out[1][0].item<double>(), out[0][0].item<double>(), 2e-5 * std::abs(out[0][0].item<double>()));
    const double tol = dtype == at::kFloat ? 1e-4 : 2e-2;
    EXPECT_LT(test::max_rel(out[1][1], out[0][1]), tol);
    EXPECT_LT(test::max_rel(out[1][2], out[0][2]), tol);
  }
}

TEST(LmHeadLoss, FrozenWeightBf16AndMemory) {
  const auto c = head_case(2, 9, 32, 64, 2);
  // A frozen head: only the hidden states get a gradient.
  auto h = c.h.clone().requires_grad_(true);
  functional::lm_head_loss(h, c.w, c.tok, c.th, c.tw, LmHeadLossOptions().chunk(5)).backward();
  EXPECT_TRUE(h.grad().defined());
  // 16-bit inputs: logits in fp32, gradients in the inputs' dtype, the loss of the rounded values.
  auto hb = c.h.to(at::kBFloat16).requires_grad_(true), wb = c.w.to(at::kBFloat16).requires_grad_(true);
  const auto lb = functional::lm_head_loss(hb, wb, c.tok, c.th, c.tw, LmHeadLossOptions().chunk(5));
  const auto lf = functional::lm_head_loss(hb.detach().to(at::kFloat), wb.detach().to(at::kFloat), c.tok, c.th, c.tw,
                                           LmHeadLossOptions().chunk(5));
  EXPECT_NEAR(lb.item<double>(), lf.item<double>(), 1e-6 * std::abs(lf.item<double>()));
  lb.backward();
  EXPECT_EQ(hb.grad().scalar_type(), at::kBFloat16);
  EXPECT_EQ(wb.grad().scalar_type(), at::kBFloat16);

  // The point: [tokens, vocab] buffers never exist. 4 x 128 tokens, 8192 classes: each full
  // logits-sized fp32 buffer is 16 MiB.
  const auto big = head_case(4, 128, 64, 8192, 3);
  const int64_t logits_bytes = int64_t{4} * 128 * 8192 * 4;
  int64_t unfused = 0, fused = 0;
  {
    auto hh = big.h.clone().requires_grad_(true), ww = big.w.clone().requires_grad_(true);
    MemoryMeter m;
    const auto logits = at::linear(hh, ww);
    const auto loss = 0.5 * functional::distillation_kl_loss(logits, at::linear(big.th, big.tw), 2.0) +
                      0.5 * functional::causal_lm_loss(logits, big.tok);
    loss.backward();
    unfused = m.report().cpu.peak_delta();
  }
  {
    auto hh = big.h.clone().requires_grad_(true), ww = big.w.clone().requires_grad_(true);
    MemoryMeter m;
    functional::lm_head_loss(hh, ww, big.tok, big.th, big.tw, LmHeadLossOptions().chunk(64)).backward();
    fused = m.report().cpu.peak_delta();
  }
  // Chunks of 64 rows: a few 2 MiB buffers, dW 2 MiB (measured 18.1 MiB against 147.9 MiB unfused).
  EXPECT_GT(unfused, 4 * logits_bytes) << unfused;
  EXPECT_LT(fused, unfused / 4) << fused << " against " << unfused;
  std::cout << "lm_head_loss peak " << fused / 1048576.0 << " MiB, unfused " << unfused / 1048576.0 << " MiB\n";
}

// A teacher of another width (distilling a larger model), and the loss alone under no-grad.
TEST(LmHeadLoss, WiderTeacherAndNoGrad) {
  const auto c = head_case(2, 6, 8, 30, 5);
  at::manual_seed(6);
  const auto th = at::randn({2, 6, 24}), tw = at::randn({30, 24}) * 0.2;
  auto h = c.h.clone().requires_grad_(true);
  const auto o = LmHeadLossOptions().chunk(5).alpha(0.7).temperature(1.5);
  const auto loss = functional::lm_head_loss(h, c.w, c.tok, th, tw, o);
  const auto h64 = c.h.to(at::kDouble).requires_grad_(true);
  const auto logits = at::linear(h64, c.w.to(at::kDouble));
  const auto ref = 0.7 * functional::distillation_kl_loss(logits, at::linear(th, tw).to(at::kDouble), 1.5) +
                   0.3 * functional::causal_lm_loss(logits, c.tok);
  EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 2e-6 * std::abs(ref.item<double>()));
  loss.backward();
  ref.backward();
  EXPECT_LT(test::max_rel(h.grad().to(at::kDouble), h64.grad()), 1e-5);
  at::NoGradGuard ng;
  const auto again = functional::lm_head_loss(h, c.w, c.tok, th, tw, o);
  EXPECT_FALSE(again.requires_grad());
  EXPECT_EQ(again.item<float>(), loss.item<float>());
}

// A bf16 teacher (--teacher-dtype bf16): the loss of its values in fp32, its head converted a block
// of 8,192 rows at a time, never whole (a vocabulary of three blocks here).
TEST(LmHeadLoss, Bf16TeacherEqualsItsValuesInFp32WithoutAWholeFp32Head) {
  const int64_t V = 2 * 8192 + 100, D = 64;
  const auto c = head_case(2, 6, D, V, 9);
  const auto th = c.th.to(at::kBFloat16), tw = c.tw.to(at::kBFloat16);
  const auto o = LmHeadLossOptions().chunk(2).alpha(0.6).temperature(2.0);
  auto h = c.h.clone().requires_grad_(true), h32 = c.h.clone().requires_grad_(true);
  const auto loss = functional::lm_head_loss(h, c.w, c.tok, th, tw, o);
  const auto want = functional::lm_head_loss(h32, c.w, c.tok, th.to(at::kFloat), tw.to(at::kFloat), o);
  EXPECT_NEAR(loss.item<double>(), want.item<double>(), 1e-6 * std::abs(want.item<double>()));
  loss.backward();
  want.backward();
  EXPECT_LT(test::max_rel(h.grad(), h32.grad()), 1e-5);
  at::NoGradGuard ng;
  MemoryMeter m;
  functional::lm_head_loss(c.h, c.w, c.tok, th, tw, o);
  const int64_t whole_fp32_head = V * D * 4;  // 4.2 MB; a block is 2 MB
  EXPECT_LT(m.report().cpu.peak_delta(), whole_fp32_head) << m.report().cpu.peak_delta();
}

// A padded batch: with its attention mask the loss is the one of the unpadded sequences (cross
// entropy averaged over their next-token pairs, KL over their tokens), whatever the pads hold, and
// the pads get no gradient.
TEST(LmHeadLoss, AttentionMaskGivesTheLossOfTheUnpaddedSequences) {
  const int64_t S = 7, D = 12, V = 40;
  const std::vector<int64_t> lengths = {7, 4, 2};
  const int64_t B = static_cast<int64_t>(lengths.size());
  const auto c = head_case(B, S, D, V, 7);
  auto tok = c.tok.clone(), mask = at::ones({B, S}, at::kLong);
  auto h = c.h.clone(), th = c.th.clone();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pad = S - lengths[b];
    if (pad == 0) continue;
    mask[b].narrow(0, lengths[b], pad).fill_(0);
    tok[b].narrow(0, lengths[b], pad).fill_(-1);  // not a token: must not be read
    // Garbage that must not reach a sum (a pad row read at all would poison it).
    h[b].narrow(0, lengths[b], pad)
        .fill_(b == 1 ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity());
    th[b].narrow(0, lengths[b], pad).fill_(std::numeric_limits<float>::quiet_NaN());
  }
  const double alpha = 0.4, T = 2.0;
  // Reference: each sequence alone, in fp64, weighted back to the batch's averages.
  auto h64 = h.to(at::kDouble).requires_grad_(true);
  at::Tensor ce = at::zeros({}, at::kDouble), kl = at::zeros({}, at::kDouble);
  int64_t pairs = 0, tokens = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = lengths[b];
    const auto hb = h64[b].narrow(0, 0, L).unsqueeze(0);
    const auto logits = at::linear(hb, c.w.to(at::kDouble));
    const auto tl = at::linear(th[b].narrow(0, 0, L).unsqueeze(0).to(at::kDouble), c.tw.to(at::kDouble));
    ce = ce + functional::causal_lm_loss(logits, tok[b].narrow(0, 0, L).unsqueeze(0)) * static_cast<double>(L - 1);
    kl = kl + functional::distillation_kl_loss(logits, tl, T) * static_cast<double>(L);
    pairs += L - 1;
    tokens += L;
  }
  const auto ref = alpha * kl / static_cast<double>(tokens) + (1 - alpha) * ce / static_cast<double>(pairs);
  ref.backward();
  for (int64_t chunk : {3, 8, 100}) {
    auto hf = h.clone().requires_grad_(true);
    const auto loss = functional::lm_head_loss(hf, c.w, tok, th, c.tw,
                                               LmHeadLossOptions().chunk(chunk).alpha(alpha).temperature(T), mask);
    EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 2e-6 * std::abs(ref.item<double>())) << chunk;
    loss.backward();
    EXPECT_LT(test::max_rel(hf.grad().to(at::kDouble), h64.grad()), 1e-5) << chunk;
    EXPECT_EQ(hf.grad()[2].narrow(0, 2, S - 2).abs().max().item<float>(), 0.0f) << chunk;
    // The weight's gradient: as with the pads' rows zeroed, finite.
    auto wf = c.w.clone().requires_grad_(true), wz = c.w.clone().requires_grad_(true);
    const auto o = LmHeadLossOptions().chunk(chunk).alpha(alpha).temperature(T);
    functional::lm_head_loss(h, wf, tok, th, c.tw, o, mask).backward();
    const auto keep = mask.unsqueeze(-1).to(at::kBool);
    functional::lm_head_loss(h.where(keep, 0.0), wz, tok, th.where(keep, 0.0), c.tw, o, mask).backward();
    EXPECT_TRUE(wf.grad().isfinite().all().item<bool>()) << chunk;
    EXPECT_TRUE(wf.grad().allclose(wz.grad(), 1e-6, 1e-7)) << chunk;
  }
  // Without the mask the same batch is refused by name: its pads hold -1.
  EXPECT_THROW(functional::lm_head_loss(h, c.w, tok, th, c.tw), c10::Error);
  // A mask that leaves no pair to predict (and a cross entropy to compute) is refused.
  auto ones_only = at::zeros({B, S}, at::kLong);
  ones_only.select(1, 0).fill_(1);
  EXPECT_THROW(functional::lm_head_loss(h, c.w, tok, {}, {}, {}, ones_only), c10::Error);
  EXPECT_THROW(functional::lm_head_loss(h, c.w, tok, {}, {}, {}, at::zeros({B, S}, at::kLong)), c10::Error);
  EXPECT_THROW(functional::lm_head_loss(h, c.w, tok, {}, {}, {}, mask.to(at::kFloat)), c10::Error);
}

TEST(LmHeadLoss, BadInput) {
  const auto c = head_case(2, 5, 8, 20, 4);
  EXPECT_THROW(functional::lm_head_loss(c.h, c.w, c.tok.clamp_max(5) + 20), c10::Error);  // beyond the vocabulary
  EXPECT_THROW(functional::lm_head_loss(c.h, c.w.narrow(1, 0, 4), c.tok), c10::Error);    // dim mismatch
  EXPECT_THROW(functional::lm_head_loss(c.h, c.w, c.tok.to(at::kInt)), c10::Error);
  EXPECT_THROW(functional::lm_head_loss(c.h, c.w, c.tok.narrow(1, 0, 1)), c10::Error);
  EXPECT_THROW(functional::lm_head_loss(c.h.narrow(1, 0, 1), c.w, c.tok.narrow(1, 0, 1)), c10::Error);  // seq 1
  EXPECT_THROW(functional::lm_head_loss(c.h.narrow(0, 0, 0), c.w, c.tok.narrow(0, 0, 0)), c10::Error);  // no rows
  EXPECT_THROW(functional::lm_head_loss(c.h, c.w, c.tok, c.th, {}), c10::Error);  // half a teacher
  EXPECT_THROW(functional::lm_head_loss(c.h, c.w, c.tok, c.th, c.tw.narrow(0, 0, 10)), c10::Error);
  EXPECT_THROW(functional::lm_head_loss(c.h, c.w, c.tok, {}, {}, LmHeadLossOptions().chunk(0)), c10::Error);
  EXPECT_THROW(functional::lm_head_loss(c.h, c.w, c.tok, {}, {}, LmHeadLossOptions().alpha(1.5)), c10::Error);
  EXPECT_THROW(functional::lm_head_loss(c.h, c.w, c.tok, {}, {}, LmHeadLossOptions().temperature(0)), c10::Error);
}

}  // namespace
}  // namespace edkm
