// edkm/nn/padding.h: dynamic padding, length bucketing, chunked processing equal to the plain call.
#include <edkm/memory/memory.h>
#include <edkm/nn/padding.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <set>

#include "test_util.h"

namespace edkm {
namespace {

TEST(Padding, PadsToTheLongestWithMaskAndLengths) {
  auto a = at::tensor({1, 2, 3}, at::kLong), b = at::tensor({4}, at::kLong), c = at::tensor({5, 6}, at::kLong);
  auto batch = pad_sequences({a, b, c}, PadOptions().pad_value(-1));
  EXPECT_TRUE(batch.values.equal(at::tensor({1, 2, 3, 4, -1, -1, 5, 6, -1}, at::kLong).view({3, 3})));
  EXPECT_TRUE(batch.attention_mask.equal(at::tensor({1, 1, 1, 1, 0, 0, 1, 1, 0}, at::kLong).view({3, 3})));
  EXPECT_TRUE(batch.lengths.equal(at::tensor({3, 1, 2}, at::kLong)));

  auto left = pad_sequences({a, b}, PadOptions().left(true).pad_to_multiple_of(4));
  EXPECT_TRUE(left.values.equal(at::tensor({0, 1, 2, 3, 0, 0, 0, 4}, at::kLong).view({2, 4})));
  EXPECT_TRUE(left.attention_mask.equal(at::tensor({0, 1, 1, 1, 0, 0, 0, 1}, at::kLong).view({2, 4})));

  // [length, features] sequences (embeddings)
  auto e1 = at::randn({2, 3}), e2 = at::randn({4, 3});
  auto emb = pad_sequences({e1, e2});
  EXPECT_EQ(emb.values.sizes(), (std::vector<int64_t>{2, 4, 3}));
  EXPECT_TRUE(emb.values[0].narrow(0, 0, 2).equal(e1));
  EXPECT_TRUE(emb.values[0].narrow(0, 2, 2).eq(0).all().item<bool>());
  EXPECT_TRUE(emb.values[1].equal(e2));
}

TEST(Padding, BucketsCoverEveryIndexOnceAndCutPadding) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  auto l = at::randint(1, 512, {1000}, gen, at::kLong);
  std::vector<int64_t> lengths(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + 1000);
  auto batches = bucket_by_length(lengths, BucketOptions(32).max_tokens(8192));
  std::set<int64_t> seen;
  for (const auto& b : batches) {
    EXPECT_LE(b.size(), 32u);
    int64_t longest = 0;
    for (auto i : b) {
      EXPECT_TRUE(seen.insert(i).second) << "index " << i << " twice";
      longest = std::max(longest, lengths[i]);
    }
    EXPECT_LE(longest * static_cast<int64_t>(b.size()), 8192);
    for (size_t k = 1; k < b.size(); ++k) EXPECT_LE(lengths[b[k - 1]], lengths[b[k]]);
  }
  EXPECT_EQ(seen.size(), 1000u);
  // sequential batches of 32 padded to the global max vs bucketed
  std::vector<std::vector<int64_t>> naive;
  for (int64_t i = 0; i < 1000; i += 32) {
    naive.emplace_back();
    for (int64_t j = i; j < std::min<int64_t>(i + 32, 1000); ++j) naive.back().push_back(j);
  }
  const int64_t real = l.sum().item<int64_t>();
  EXPECT_LT(padded_tokens(lengths, batches), real * 11 / 10);  // < 10% padding
  EXPECT_GT(padded_tokens(lengths, naive), real * 3 / 2);      // random batches pad a lot
  // a sequence above max_tokens gets its own batch; shuffling is seeded
  auto lone = bucket_by_length({5, 100, 6}, BucketOptions(8).max_tokens(50));
  ASSERT_EQ(lone.size(), 2u);
  EXPECT_EQ(lone[1], std::vector<int64_t>{1});
  auto s1 = bucket_by_length(lengths, BucketOptions(16).shuffle(true).seed(7));
  auto s2 = bucket_by_length(lengths, BucketOptions(16).shuffle(true).seed(7));
  EXPECT_EQ(s1, s2);
  EXPECT_NE(s1, bucket_by_length(lengths, BucketOptions(16)));
}

TEST(Padding, ChunkedEqualsThePlainCallWithAndWithoutCheckpoint) {
  torch::manual_seed(2);
  torch::nn::Sequential mlp(torch::nn::Linear(8, 32), torch::nn::GELU(), torch::nn::Linear(32, 8));
  mlp->to(at::kDouble);
  auto fn = [mlp](const at::Tensor& t) mutable { return mlp->forward(t); };
  auto x0 = at::randn({3, 50, 8}, at::TensorOptions().dtype(at::kDouble));
  auto run = [&](const std::function<at::Tensor(const at::Tensor&)>& f) {
    mlp->zero_grad();
    auto x = x0.clone().requires_grad_(true);
    auto y = f(x);
    y.pow(2).sum().backward();
    std::vector<at::Tensor> out{y.detach(), x.grad()};
    for (auto& p : mlp->parameters()) out.push_back(p.grad().clone());
    return out;
  };
  auto plain = run(fn);
  for (bool ckpt : {false, true})
    for (int64_t dim : {1, 0, -2})
      for (int64_t chunk : {1, 7, 50, 64}) {
        auto got = run([&](const at::Tensor& x) {
          return functional::chunked(fn, x, ChunkOptions(chunk).dim(dim).checkpoint(ckpt), mlp->parameters());
        });
        for (size_t i = 0; i < got.size(); ++i)
          EXPECT_LT(test::max_rel(got[i], plain[i]), 1e-13) << ckpt << " " << dim << " " << chunk << " " << i;
      }
}

TEST(Padding, ChunkedInferenceHoldsOneChunkOfIntermediates) {
  torch::manual_seed(3);
  torch::nn::Sequential mlp(torch::nn::Linear(16, 256), torch::nn::GELU(), torch::nn::Linear(256, 16));
  auto fn = [mlp](const at::Tensor& t) mutable { return mlp->forward(t); };
  auto x = at::randn({1, 4096, 16});
  at::NoGradGuard no_grad;
  auto peak = [&](bool chunk) {
    MemoryMeter m;
    auto y = chunk ? functional::chunked(fn, x, ChunkOptions(256)) : fn(x);
    return m.report().cpu.peak_delta();
  };
  const int64_t plain = peak(false), chunked = peak(true);
  // plain: two [4096, 256] intermediates; chunked: two [256, 256] + the chunk outputs and result
  EXPECT_GE(plain, 2 * 4096 * 256 * 4);
  EXPECT_LT(chunked, plain / 4);
}

TEST(Padding, BadInput) {
  test::expect_error([] { pad_sequences({}); }, {"no sequences"});
  test::expect_error([] { pad_sequences({at::ones({2, 3}), at::ones({2, 4})}); }, {"sequence 1", "trailing dims"});
  test::expect_error([] { pad_sequences({at::ones({2}), at::ones({2}, at::kLong)}); }, {"sequence 1"});
  test::expect_error([] { pad_sequences({at::ones({2})}, PadOptions().pad_to_multiple_of(0)); },
                     {"pad_to_multiple_of"});
  test::expect_error([] { bucket_by_length({1, 2}, BucketOptions(0)); }, {"batch_size"});
  test::expect_error([] { bucket_by_length({1, -2}, BucketOptions(2)); }, {"length 1", "negative"});
  auto id = [](const at::Tensor& t) { return t; };
  test::expect_error([&] { functional::chunked(id, at::ones({4, 4}), ChunkOptions(0)); }, {"chunk_size"});
  test::expect_error([&] { functional::chunked(id, at::ones({4, 4}), ChunkOptions(2).dim(2)); }, {"dim 2"});
}

}  // namespace
}  // namespace edkm
