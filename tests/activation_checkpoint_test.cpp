// edkm/nn/activation_checkpoint.h: checkpointed modules and callables give the plain gradients (RNG and autocast
// state restored in the recompute), nest, and keep less memory.
#include <ATen/autocast_mode.h>
#include <edkm/memory/memory.h>
#include <edkm/nn/activation_checkpoint.h>
#include <torch/autograd.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/utils.h>

#include "test_util.h"

namespace edkm {
namespace {

using torch::nn::AnyModule;
using torch::nn::Sequential;

Sequential mlp_block(int64_t d, double dropout = 0) {
  Sequential s(torch::nn::Linear(d, 4 * d), torch::nn::GELU());
  if (dropout > 0) s->push_back(torch::nn::Dropout(dropout));
  s->push_back(torch::nn::Linear(4 * d, d));
  return s;
}

// Output, input gradient and parameter gradients of one forward/backward.
std::vector<at::Tensor> grads_of(torch::nn::Module& params_of, const std::function<at::Tensor(const at::Tensor&)>& f,
                                 const at::Tensor& x0) {
  params_of.zero_grad();
  auto x = x0.clone().requires_grad_(true);
  auto y = f(x);
  (y * y).sum().backward();
  std::vector<at::Tensor> out{y.detach(), x.grad()};
  for (auto& p : params_of.parameters()) out.push_back(p.grad().clone());
  return out;
}

void expect_equal(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b, double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_TRUE(a[i].defined() && b[i].defined()) << i;
    EXPECT_LT(test::max_rel(a[i], b[i]), tol) << "tensor " << i;
  }
}

TEST(Checkpoint, ModuleEqualsPlainForwardAndGradients) {
  torch::manual_seed(0);
  auto block = mlp_block(16);
  block->to(at::kDouble);
  auto x = at::randn({8, 16}, at::TensorOptions().dtype(at::kDouble));
  auto plain = grads_of(
      *block, [&](const at::Tensor& t) { return block->forward(t); }, x);
  auto ckpt = grads_of(
      *block, [&](const at::Tensor& t) { return functional::checkpoint(block, t); }, x);
  expect_equal(ckpt, plain, 1e-14);
  Checkpoint wrapped(block);

  auto mod = grads_of(
      *block, [&](const at::Tensor& t) { return wrapped(t); }, x);
  expect_equal(mod, plain, 1e-14);
}

TEST(Checkpoint, AnyModuleAndClone) {
  torch::manual_seed(8);
  torch::nn::Linear fc(6, 6);
  fc->to(at::kDouble);
  Checkpoint wrapped{AnyModule(fc)};
  auto x = at::randn({3, 6}, at::TensorOptions().dtype(at::kDouble));
  auto plain = grads_of(
      *fc, [&](const at::Tensor& t) { return fc(t); }, x);
  auto ckpt = grads_of(
      *fc, [&](const at::Tensor& t) { return wrapped(t); }, x);
  expect_equal(ckpt, plain, 1e-15);
  auto copy = std::dynamic_pointer_cast<CheckpointImpl>(wrapped->clone());
  ASSERT_TRUE(copy);
  auto params = copy->parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_NE(params[0].data_ptr(), fc->weight.data_ptr());  // deep
  EXPECT_TRUE(params[0].equal(fc->weight));
  EXPECT_TRUE(copy->forward(x).equal(fc(x)));
}

TEST(Checkpoint, NestedCheckpointsInsideSequentials) {
  torch::manual_seed(1);
  auto a = mlp_block(12), b = mlp_block(12), c = mlp_block(12);
  torch::nn::Linear head(12, 3);
  torch::nn::Module all;  // one place for the parameters of both forms
  all.register_module("a", a.ptr());
  all.register_module("b", b.ptr());
  all.register_module("c", c.ptr());
  all.register_module("head", head.ptr());
  all.to(at::kDouble);
  // checkpoint(a), checkpoint(Sequential(checkpoint(b), checkpoint(c))), head: same parameters
  Sequential nested(Checkpoint(a), Checkpoint(Sequential(Checkpoint(b), Checkpoint(c))), head);
  auto x = at::randn({5, 12}, at::TensorOptions().dtype(at::kDouble));
  auto p = grads_of(
      all, [&](const at::Tensor& t) { return head(c->forward(b->forward(a->forward(t)))); }, x);
  auto n = grads_of(
      all, [&](const at::Tensor& t) { return nested->forward(t); }, x);
  expect_equal(n, p, 1e-14);
  EXPECT_EQ(nested->parameters().size(), all.parameters().size());
}

// Gradients of a dropout block: plain, checkpointed, checkpointed without restoring the RNG.
void check_dropout_on(const at::Device& device) {
  torch::manual_seed(2);
  auto block = mlp_block(16, /*dropout=*/0.5);
  block->to(device);
  auto x = at::randn({32, 16}, at::TensorOptions().device(device));
  auto run = [&](bool checkpointed, bool preserve) {
    torch::manual_seed(123);
    auto g = grads_of(
        *block,
        [&](const at::Tensor& t) {
          return checkpointed ? functional::checkpoint(block, t, CheckpointOptions().preserve_rng_state(preserve))
                              : block->forward(t);
        },
        x);
    g.push_back(at::rand({4}, at::TensorOptions().device(device)));  // the RNG continues as in the plain run
    return g;
  };
  auto plain = run(false, true), ckpt = run(true, true);
  expect_equal(ckpt, plain, 1e-6);
  // the test can see a wrong mask: without restoring the state the gradients differ
  auto unpreserved = run(true, false);
  EXPECT_GT(test::max_rel(unpreserved[2], plain[2]), 1e-2);
}

TEST(Checkpoint, DropoutDrawsTheSameMasksInTheRecompute) { check_dropout_on(at::kCPU); }

TEST(Checkpoint, CudaDropoutDrawsTheSameMasksInTheRecompute) {
  EDKM_SKIP_WITHOUT_GPU();
  check_dropout_on(at::kCUDA);
}

TEST(Checkpoint, AutocastStateIsRestoredInTheRecompute) {
  torch::manual_seed(4);
  auto block = mlp_block(32);
  auto x = at::randn({16, 32});
  auto run = [&](bool checkpointed, bool preserve) {
    block->zero_grad();
    auto xr = x.clone().requires_grad_(true);
    at::Tensor y;
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    y = checkpointed ? functional::checkpoint(block, xr, CheckpointOptions().preserve_autocast_state(preserve))
                     : block->forward(xr);
    at::autocast::set_autocast_enabled(at::kCPU, false);
    at::autocast::clear_cache();
    EXPECT_EQ(y.scalar_type(), at::kBFloat16);
    y.to(at::kFloat).pow(2).sum().backward();  // backward outside the autocast region
    std::vector<at::Tensor> out{y.detach().to(at::kFloat), xr.grad()};
    for (auto& p : block->parameters()) out.push_back(p.grad().clone());
    return out;
  };
  auto plain = run(false, true), ckpt = run(true, true);
  expect_equal(ckpt, plain, 1e-6);
  auto unpreserved = run(true, false);  // recompute in fp32: different gradients
  EXPECT_GT(test::max_rel(unpreserved[2], plain[2]), 1e-4);
  EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
}

TEST(Checkpoint, CallableWithSeveralTensorsAndAutogradGrad) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const auto o = at::TensorOptions().dtype(at::kDouble);
  auto w = at::randn({6, 6}, gen, o).requires_grad_(true);
  auto a = at::randn({4, 6}, gen, o).requires_grad_(true);
  auto b = at::randn({4, 6}, gen, o);  // no gradient wanted
  auto fn = [w](const std::vector<at::Tensor>& in) {
    auto h = at::tanh(at::matmul(in[0], w) + in[1]);
    return std::vector<at::Tensor>{h, (h * in[0]).sum(-1)};
  };
  auto plain_out = fn({a, b});
  auto plain = torch::autograd::grad({plain_out[0].sum() + plain_out[1].pow(2).sum()}, {a, w});
  auto out = functional::checkpoint(fn, {a, b}, {w});
  ASSERT_EQ(out.size(), 2u);
  auto ck = torch::autograd::grad({out[0].sum() + out[1].pow(2).sum()}, {a, w});
  EXPECT_LT(test::max_rel(ck[0], plain[0]), 1e-14);
  EXPECT_LT(test::max_rel(ck[1], plain[1]), 1e-14);
  EXPECT_LT(test::max_rel(out[1], plain_out[1]), 1e-14);
}

TEST(Checkpoint, ParametersGetGradientsWhenTheInputNeedsNone) {
  torch::manual_seed(6);
  auto block = mlp_block(8);
  auto x = at::randn({3, 8});  // data: no gradient
  block->forward(x).sum().backward();
  std::vector<at::Tensor> plain;
  for (auto& p : block->parameters()) plain.push_back(p.grad().clone());
  block->zero_grad();
  functional::checkpoint(block, x).sum().backward();
  auto params = block->parameters();
  for (size_t i = 0; i < params.size(); ++i) EXPECT_LT(test::max_rel(params[i].grad(), plain[i]), 1e-6);
}

TEST(Checkpoint, UnderNoGradJustRuns) {
  auto block = mlp_block(8);
  auto x = at::randn({3, 8});
  at::NoGradGuard no_grad;
  auto y = functional::checkpoint(block, x);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_TRUE(y.equal(block->forward(x)));
}

TEST(Checkpoint, StackKeepsFarLessAfterForward) {
  torch::manual_seed(7);
  const int64_t layers = 6, d = 64, rows = 256;
  std::vector<Sequential> blocks;
  Sequential ckpt;
  for (int64_t i = 0; i < layers; ++i) {
    blocks.push_back(mlp_block(d));
    ckpt->push_back(Checkpoint(blocks.back()));
  }
  auto x = at::randn({rows, d}).requires_grad_(true);
  auto kept = [&](bool checkpointed) {
    MemoryMeter m;
    at::Tensor y = x;
    if (checkpointed) {
      y = ckpt->forward(x);
    } else {
      for (auto& blk : blocks) y = blk->forward(y);
    }
    const int64_t bytes = m.report().cpu.current_delta();
    y.sum().backward();
    return std::make_pair(bytes, m.report().cpu.peak_delta());
  };
  auto [plain_kept, plain_peak] = kept(false);
  auto [ckpt_kept, ckpt_peak] = kept(true);
  // plain keeps per layer [rows, 4d] twice (Linear out, GELU out) + [rows, d]; checkpointed only
  // the [rows, d] output of each layer and the CPU RNG state it restores in the recompute.
  const int64_t rng_bytes = at::detail::getDefaultCPUGenerator().get_state().nbytes();
  EXPECT_EQ(ckpt_kept, layers * (rows * d * 4 + rng_bytes));
  EXPECT_GE(plain_kept, layers * rows * 9 * d * 4);
  EXPECT_LT(ckpt_peak, plain_peak);
}

TEST(Checkpoint, BadInput) {
  test::expect_error([] { functional::checkpoint(functional::TensorFunction(), at::ones({2})); }, {"callable"});
  test::expect_error([] { Checkpoint{AnyModule()}; }, {"empty"});
  auto count = std::make_shared<int>(0);
  auto x = at::ones({2}, at::kDouble).requires_grad_(true);
  auto out = functional::checkpoint(
      [count](const std::vector<at::Tensor>& in) {
        return ++*count == 1 ? std::vector<at::Tensor>{in[0] * 2} : std::vector<at::Tensor>{in[0] * 2, in[0]};
      },
      {x});
  test::expect_error([&] { out[0].sum().backward(); }, {"same function"});
  test::expect_error(
      [&] {
        functional::checkpoint([](const std::vector<at::Tensor>& in) { return in; }, {x, at::Tensor()});
      },
      {"inputs[1] is undefined"});
}

// The module form with a holder whose forward is not a template (checkpoint(linear, x) did not
// compile: the callable overloads instantiated Linear's operator() with a vector).
TEST(Checkpoint, ModuleFormTakesAnyHolder) {
  torch::nn::Linear lin(6, 3);
  auto x = at::randn({2, 6}).requires_grad_(true);
  auto y = functional::checkpoint(lin, x);
  y.square().sum().backward();
  auto x2 = x.detach().clone().requires_grad_(true);
  const auto gw = lin->weight.grad().clone();
  lin->weight.mutable_grad().zero_();
  lin->forward(x2).square().sum().backward();
  EXPECT_TRUE(at::allclose(x.grad(), x2.grad()));
  EXPECT_TRUE(at::allclose(gw, lin->weight.grad()));
}

}  // namespace
}  // namespace edkm
