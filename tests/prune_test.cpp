// edkm/nn/prune.h: masks, in-place pruning with masked gradients equal to PyTorch's
// weight_orig * mask reparametrisation, remove, sparsity report.
#include <edkm/nn/prune.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include "test_util.h"

namespace edkm {
namespace {

TEST(Prune, L1UnstructuredMaskDropsTheSmallestMagnitudes) {
  auto w = at::tensor({0.5, -0.1, 0.3, -0.9, 0.05, 0.7}, at::kDouble).view({2, 3});
  auto m = functional::l1_unstructured_mask(w, 0.5);  // 3 of 6
  EXPECT_EQ(m.scalar_type(), at::kBool);
  auto expected = at::tensor({1, 0, 0, 1, 0, 1}).to(at::kBool).view({2, 3});
  EXPECT_TRUE(m.equal(expected));
  EXPECT_TRUE(functional::l1_unstructured_mask(w, 0).all().item<bool>());
  EXPECT_FALSE(functional::l1_unstructured_mask(w, 1).any().item<bool>());
  // round(amount * n), like torch.nn.utils.prune
  auto big = at::randn({10, 10});
  EXPECT_EQ(functional::l1_unstructured_mask(big, 0.333).logical_not().sum().item<int64_t>(), 33);
}

TEST(Prune, LnStructuredMaskDropsWholeSlices) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  auto w = at::randn({6, 5}, gen);
  w[2].mul_(0.01);
  w[4].mul_(0.02);
  auto rows = functional::ln_structured_mask(w, 2.0 / 6, 2, 0);
  for (int64_t r = 0; r < 6; ++r) EXPECT_EQ(rows[r].all().item<bool>(), r != 2 && r != 4) << r;
  EXPECT_EQ(rows.sum().item<int64_t>(), 4 * 5);
  // columns by L1: compare with the norms computed here
  auto cols = functional::ln_structured_mask(w, 0.4, 1, -1);
  auto norms = w.abs().sum(0);
  auto kept = std::get<1>(norms.topk(3));
  for (int64_t c = 0; c < 5; ++c) EXPECT_EQ(cols.select(1, c).all().item<bool>(), (kept == c).any().item<bool>()) << c;
}

TEST(Prune, PrunedLinearEqualsTheMaskedReparametrisation) {
  torch::manual_seed(2);
  torch::nn::Linear fc(8, 6);
  fc->to(at::kDouble);
  auto orig = fc->weight.detach().clone();
  prune::l1_unstructured(*fc, "weight", 0.4);
  ASSERT_TRUE(prune::is_pruned(*fc, "weight"));
  auto mask = prune::mask(*fc, "weight");
  EXPECT_EQ(mask.logical_not().sum().item<int64_t>(), 19);  // round(0.4 * 48)
  EXPECT_TRUE(fc->weight.detach().equal(orig * mask));

  // PyTorch's prune: weight = weight_orig * mask each forward; the gradient of weight_orig
  auto w_orig = orig.clone().requires_grad_(true);
  auto x = at::randn({5, 8}, at::TensorOptions().dtype(at::kDouble));
  auto y_ref = at::linear(x, w_orig * mask, fc->bias.detach());
  y_ref.pow(3).sum().backward();
  auto y = fc(x);
  y.pow(3).sum().backward();
  EXPECT_LT(test::max_rel(y, y_ref), 1e-15);
  EXPECT_LT(test::max_rel(fc->weight.grad(), w_orig.grad()), 1e-15);
  EXPECT_TRUE(fc->weight.grad().masked_select(mask.logical_not()).eq(0).all().item<bool>());
  // state_dict-visible and moves with the module
  EXPECT_TRUE(fc->named_buffers().contains("prune_masks.weight"));
}

TEST(Prune, IterativePruningReachesTheTargetSparsityAndRemoveMakesItPermanent) {
  torch::manual_seed(3);
  torch::nn::Linear fc(10, 10);
  prune::l1_unstructured(*fc, "weight", 0.3);
  auto first = prune::mask(*fc, "weight").clone();
  prune::l1_unstructured(*fc, "weight", 0.5);
  auto second = prune::mask(*fc, "weight");
  EXPECT_EQ(second.logical_not().sum().item<int64_t>(), 50);
  EXPECT_TRUE((first.logical_not() & second).sum().item<int64_t>() == 0);  // pruned stays pruned
  prune::ln_structured(*fc, "weight", 0.2, 2, 0);                          // plus 2 whole rows
  auto third = prune::mask(*fc, "weight");
  EXPECT_GE(third.logical_not().sum().item<int64_t>(), 50);
  int64_t dead_rows = 0;
  for (int64_t r = 0; r < 10; ++r) dead_rows += !third[r].any().item<bool>();
  EXPECT_GE(dead_rows, 2);

  prune::remove(*fc, "weight");
  EXPECT_FALSE(prune::is_pruned(*fc, "weight"));
  EXPECT_FALSE(fc->named_buffers().contains("prune_masks.weight"));
  auto zeros = fc->weight.detach().eq(0);
  EXPECT_TRUE(zeros.equal(third.logical_not()));
  // the gradient is no longer masked
  fc->zero_grad();
  fc(at::randn({4, 10})).sum().backward();
  EXPECT_GT(fc->weight.grad().masked_select(zeros).abs().sum().item<double>(), 0);
}

TEST(Prune, SparsityReportAndReapply) {
  torch::manual_seed(4);
  torch::nn::Sequential net(torch::nn::Linear(4, 8), torch::nn::Linear(8, 2));
  auto* first = net[0]->as<torch::nn::Linear>();
  prune::l1_unstructured(*first, "weight", 0.25);
  prune::ln_structured(*first, "bias", 0.5, 1, 0);
  auto r = prune::sparsity_report(*net);
  ASSERT_EQ(r.entries.size(), 4u);
  EXPECT_EQ(r.entries[0].name, "0.weight");
  EXPECT_EQ(r.entries[0].zeros, 8);
  EXPECT_TRUE(r.entries[0].pruned);
  EXPECT_EQ(r.entries[1].zeros, 4);
  EXPECT_TRUE(r.entries[1].pruned);
  EXPECT_FALSE(r.entries[2].pruned);
  EXPECT_EQ(r.numel, 32 + 8 + 16 + 2);
  EXPECT_EQ(r.zeros, 12);
  EXPECT_NEAR(r.sparsity(), 12.0 / 58, 1e-12);
  EXPECT_NE(r.to_string().find("0.weight"), std::string::npos);
  {
    at::NoGradGuard g;
    first->weight.add_(1.0);  // e.g. an optimiser step that moved pruned entries
  }
  prune::reapply_masks(*net);
  EXPECT_EQ(prune::sparsity_report(*net).entries[0].zeros, 8);
  prune::remove(*first, "weight");
  EXPECT_TRUE(prune::is_pruned(*first, "bias"));  // the other mask stays
}

TEST(Prune, BadInput) {
  torch::nn::Linear fc(4, 4);
  test::expect_error([&] { prune::l1_unstructured(*fc, "weight", 1.5); }, {"amount", "[0, 1]", "1.5"});
  test::expect_error([&] { prune::l1_unstructured(*fc, "weight", -0.1); }, {"amount"});
  test::expect_error([&] { prune::ln_structured(*fc, "weight", 0.5, 2, 2); }, {"dim 2", "out of range"});
  test::expect_error([&] { prune::ln_structured(*fc, "weight", 0.5, 0, 0); }, {"norm order"});
  test::expect_error([&] { prune::l1_unstructured(*fc, "kernel", 0.5); }, {"no parameter 'kernel'"});
  test::expect_error([&] { prune::remove(*fc, "weight"); }, {"not pruned"});
  test::expect_error([&] { prune::apply_mask(*fc, "weight", at::ones({3, 4})); }, {"does not match"});
  test::expect_error([&] { prune::apply_mask(*fc, "weight", at::full({4, 4}, 0.5)); }, {"only 0 and 1"});
}

}  // namespace
}  // namespace edkm
