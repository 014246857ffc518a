// edkm/dkm/module.h: the DKM module (warm start, milestones, thresholds, eval, finalize).
#include <edkm/dkm/module.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <limits>
#include <sstream>

#include "test_util.h"

namespace edkm {
namespace {

TEST(DKMModule, WarmStartsFromDetachedCentroids) {
  auto w = test::llm_like({32, 32}, 1).requires_grad_(true);
  DKM dkm(DKMOptions(3).engine(Engine::kDense).weight_threshold(0));
  auto y1 = dkm(w);
  auto c1 = dkm->centroids().clone();
  EXPECT_FALSE(c1.requires_grad());
  EXPECT_EQ(c1.sizes(), (std::vector<int64_t>{1, 8, 1}));
  // The next forward starts from the stored centroids: equal to the functional form from them.
  auto expect = functional::dkm_cluster(w, c1, dkm->options).weight;
  auto y2 = dkm(w);
  EXPECT_TRUE(at::allclose(y2, expect));
  y2.sum().backward();
  EXPECT_TRUE(w.grad().defined());
}

TEST(DKMModule, MilestoneAndThreshold) {
  auto w = test::llm_like({16, 16}, 2);
  DKM dkm(DKMOptions(2).engine(Engine::kDense).milestone(2).weight_threshold(0));
  EXPECT_TRUE(at::equal(dkm(w), w));
  dkm->step();
  EXPECT_TRUE(at::equal(dkm(w), w));
  dkm->step();
  EXPECT_FALSE(at::equal(dkm(w), w));
  DKM small(DKMOptions(2).engine(Engine::kDense));  // default threshold 2048 > 256 elements
  EXPECT_TRUE(at::equal(small(w), w));
  test::expect_error([&] { dkm->set_step(-5); }, {"set_step", ">= 0", "-5"});
  EXPECT_EQ(dkm->current_step(), 2);
}

TEST(DKMModule, EvalIsHardAssignment) {
  auto w = test::llm_like({32, 16}, 3);
  DKM dkm(DKMOptions(2).engine(Engine::kDense).weight_threshold(0));
  dkm(w);
  dkm->eval();
  auto hard = dkm(w);
  EXPECT_LE(std::get<0>(at::_unique(hard)).numel(), 4);
  EXPECT_TRUE(at::equal(hard, dkm->finalize(w).decompress()));
}

TEST(DKMModule, PerChannelScaleIsComputedOnce) {
  auto w = test::llm_like({8, 64}, 4);
  DKM dkm(DKMOptions(2).engine(Engine::kDense).weight_threshold(0).per_channel_scale(true));
  dkm(w);
  auto s = dkm->scale().clone();
  EXPECT_EQ(s.numel(), 8);
  dkm(w * 2);
  EXPECT_TRUE(at::equal(s, dkm->scale()));
  std::ostringstream os;
  dkm->pretty_print(os);
  EXPECT_NE(os.str().find("bits=2"), std::string::npos);
}

// The non-finite check sums the weight: a 16-bit sum overflows past 65504 on real weights (a
// large layer of mean 0.0015 in fp16), which is not a NaN weight and must not be flagged.
TEST(DKMModule, LargeHalfWeightsAreNotFlaggedNonFinite) {
  auto w = (test::llm_like({1024, 2048}, 5) * 0.01 + 0.05).to(at::kHalf);
  ASSERT_FALSE(at::isfinite(w.sum()).item<bool>());  // the fp16 sum overflows
  DKM dkm(DKMOptions(3).engine(Engine::kDense).weight_threshold(0));
  dkm(w);
  ASSERT_TRUE(dkm->nonfinite().defined());
  EXPECT_FALSE(dkm->nonfinite().item<bool>());
  auto bad = w.clone();
  bad[3][7] = std::numeric_limits<float>::quiet_NaN();
  dkm(bad);
  EXPECT_TRUE(dkm->nonfinite().item<bool>());
}

// to(dtype) converts the centroids and scale, not the int64 step: the module saves and loads.
TEST(DKMModule, ToDtypeKeepsTheStepCounter) {
  auto w = test::llm_like({8, 64}, 6);
  DKM dkm(DKMOptions(2).engine(Engine::kDense).weight_threshold(0).per_channel_scale(true));
  dkm(w);
  dkm->step();
  dkm->to(at::kDouble);
  auto buffers = dkm->named_buffers();
  EXPECT_EQ(buffers["step"].scalar_type(), at::kLong);
  EXPECT_EQ(buffers["centroids"].scalar_type(), at::kDouble);
  EXPECT_EQ(buffers["scale"].scalar_type(), at::kDouble);
  dkm->to(at::kCPU, at::kFloat);
  EXPECT_EQ(dkm->named_buffers()["step"].scalar_type(), at::kLong);
  EXPECT_EQ(dkm->current_step(), 1);
  std::stringstream stream;
  torch::serialize::OutputArchive out;
  dkm->save(out);
  out.save_to(stream);
  DKM other(dkm->options);
  torch::serialize::InputArchive in;
  in.load_from(stream);
  other->load(in);
  EXPECT_EQ(other->current_step(), 1);
  EXPECT_TRUE(at::equal(other->centroids(), dkm->centroids()));
}

}  // namespace
}  // namespace edkm
