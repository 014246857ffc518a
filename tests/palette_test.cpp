// edkm/palette.h and the hard-assignment kernels (CPU, and CUDA against its CPU twin).
#include <edkm/dkm.h>
#include <edkm/palette.h>

#include "test_util.h"

namespace edkm {
namespace {

TEST(Palette, FromCentroidsDecompressesToNearestCentroid) {
  auto w = test::llm_like({32, 48}, 1);
  auto o = DKMOptions(3).prune_threshold(0);
  auto c = functional::init_centroids(w, o);
  auto p = Palette::from_centroids(w, c, o);
  EXPECT_EQ(p.indices.scalar_type(), at::kByte);
  EXPECT_EQ(p.indices.sizes(), (std::vector<int64_t>{1, 32 * 48}));
  auto expect_idx = std::get<1>((w.reshape({-1, 1}) - c[0].t()).square().min(1));
  EXPECT_TRUE(at::equal(p.indices[0].to(at::kLong), expect_idx));
  auto back = p.decompress();
  EXPECT_EQ(back.sizes(), w.sizes());
  EXPECT_TRUE(at::equal(back.reshape({-1}), c[0].reshape({-1}).index_select(0, expect_idx)));
}

TEST(Palette, GroupedScaledAndVectors) {
  auto w = test::llm_like({16, 12}, 2);
  auto s = functional::channel_scale(w, ScaleScheme::kMinMax);
  for (int64_t d : {1, 2}) {
    auto o =
        DKMOptions(2).granularity(Granularity::kPerGroupedChannel).group_size(4).cluster_dim(d).per_channel_scale(true);
    auto c = functional::init_centroids(w, o, s);
    auto p = Palette::from_centroids(w, c, o, s);
    auto back = p.decompress();
    EXPECT_EQ(back.sizes(), w.sizes());
    // Every row of the rebuilt weight divided by its scale lies in its group's LUT.
    auto v = functional::to_vectors(back, ClusterLayout::of(w, o), s);  // G x n x d
    for (int64_t g = 0; g < 4; ++g) {
      auto dist = (v[g].unsqueeze(1) - c[g].unsqueeze(0)).abs().sum(-1);  // n x K
      EXPECT_LT(std::get<0>(dist.min(1)).max().item<double>(), 1e-5) << "group " << g << " d " << d;
    }
    // and the error is no worse than a uniform 2-bit grid's
    EXPECT_LT((back - w).abs().mean().item<double>(), 0.02);
  }
}

TEST(Palette, FromClusteredRecoversTheLut) {
  auto w = test::llm_like({8, 64}, 3);
  auto o = DKMOptions(2);
  auto p = Palette::from_centroids(w, functional::init_centroids(w, o), o);
  auto hard = p.decompress();
  auto q = Palette::from_clustered(hard, o);
  EXPECT_TRUE(at::equal(q.decompress(), hard));
  EXPECT_THROW(Palette::from_clustered(w, o), c10::Error);  // not finalized: too many values
}

TEST(Palette, PruneThresholdBiasesTowardsCentroidZero) {
  auto w = at::tensor({0.5f, 0.5f}).reshape({2, 1});
  auto c = at::tensor({0.0f, 1.0f}).reshape({1, 2, 1});  // 0.5 is equidistant
  EXPECT_EQ(functional::assign(w, c, DKMOptions(1).prune_threshold(0.01))[0][0].item<int>(), 0);
  auto c2 = at::tensor({1.0f, 0.0f}).reshape({1, 2, 1});
  EXPECT_EQ(functional::assign(w, c2, DKMOptions(1).prune_threshold(0.01))[0][0].item<int>(), 0);
  EXPECT_EQ(functional::assign(w, c2, DKMOptions(1).prune_threshold(0))[0][0].item<int>(), 0);  // tie: first
}

TEST(Palette, CudaAssignMatchesCpuTwin) {
  EDKM_SKIP_WITHOUT_GPU();
  auto w = test::llm_like({256, 1000}, 4);
  auto o = DKMOptions(4).granularity(Granularity::kPerGroupedChannel).group_size(32);
  auto c = functional::init_centroids(w, o);
  auto cpu = functional::assign(w, c, o);
  auto gpu = functional::assign(w.cuda(), c.cuda(), o);
  EXPECT_TRUE(at::equal(cpu, gpu.cpu()));
}

}  // namespace
}  // namespace edkm
