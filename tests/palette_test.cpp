// edkm/dkm/palette.h and the hard-assignment kernels (CPU, and CUDA against its CPU twin).
#include <edkm/dkm/dkm.h>
#include <edkm/dkm/palette.h>

#include <ATen/ops/cat.h>
#include <ATen/ops/rand.h>

#include "dkm/internal.h"
#include "test_util.h"

namespace edkm {
namespace {

TEST(Palette, FromCentroidsDecompressesToNearestCentroid) {
  auto w = test::llm_like({32, 48}, 1);
  auto o = DKMOptions(3).engine(Engine::kDense).prune_threshold(0);
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

// An fp64 palette decompresses in fp64: exactly lut[index] (times the row's fp32 scale). It was
// rebuilt through fp32 (7e-9 off); a LUT whose last dimension is not cluster_dim is refused.
TEST(Palette, Fp64PalettesStayFp64) {
  auto w = test::llm_like({16, 24}, 3).to(at::kDouble);
  auto o = DKMOptions(3).engine(Engine::kDense);
  const auto c = functional::init_centroids(w, o) + 1e-12;  // values fp32 cannot hold
  const auto p = Palette::from_centroids(w, c, o);
  const auto idx = p.indices[0].to(at::kLong);
  EXPECT_EQ(p.decompress().scalar_type(), at::kDouble);
  EXPECT_TRUE(at::equal(p.decompress().reshape({-1}), p.lut[0].reshape({-1}).index_select(0, idx)));
  const auto s = at::rand({16, 1}, at::kDouble) + 0.5;
  const auto ps = Palette::from_centroids(w, c, DKMOptions(o).per_channel_scale(true), s);
  const auto rows = ps.lut[0].reshape({-1}).index_select(0, ps.indices[0].to(at::kLong)).view({16, 24});
  EXPECT_TRUE(at::equal(ps.decompress(), rows * ps.scale.to(at::kDouble)));
  Palette bad = p;
  bad.lut = at::cat({p.lut, p.lut}, 2);  // K x 2 for cluster_dim 1
  test::expect_error([&] { bad.decompress(); }, {"inconsistent LUT", "cluster_dim 1"});
}

TEST(Palette, GroupedScaledAndVectors) {
  auto w = test::llm_like({16, 12}, 2);
  auto s = functional::channel_scale(w, ScaleScheme::kMinMax);
  for (int64_t d : {1, 2}) {
    auto o = DKMOptions(2)
                 .engine(Engine::kDense)
                 .granularity(Granularity::kPerGroupedChannel)
                 .group_size(4)
                 .cluster_dim(d)
                 .per_channel_scale(true);
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
  auto o = DKMOptions(2).engine(Engine::kDense);
  auto p = Palette::from_centroids(w, functional::init_centroids(w, o), o);
  auto hard = p.decompress();
  auto q = Palette::from_clustered(hard, o);
  EXPECT_TRUE(at::equal(q.decompress(), hard));
  EXPECT_THROW(Palette::from_clustered(w, o), c10::Error);  // not finalized: too many values
}

TEST(Palette, PruneThresholdBiasesTowardsCentroidZero) {
  auto w = at::tensor({0.5f, 0.5f}).reshape({2, 1});
  auto c = at::tensor({0.0f, 1.0f}).reshape({1, 2, 1});  // 0.5 is equidistant
  EXPECT_EQ(functional::assign(w, c, DKMOptions(1).engine(Engine::kDense).prune_threshold(0.01))[0][0].item<int>(), 0);
  auto c2 = at::tensor({1.0f, 0.0f}).reshape({1, 2, 1});
  EXPECT_EQ(functional::assign(w, c2, DKMOptions(1).engine(Engine::kDense).prune_threshold(0.01))[0][0].item<int>(), 0);
  EXPECT_EQ(functional::assign(w, c2, DKMOptions(1).engine(Engine::kDense).prune_threshold(0))[0][0].item<int>(),
            0);  // tie: first
}

// The hard assignment uses the soft assignment's distance (kernels/distance_math.h): under
// keep-sparsity (enforce_zero, prune_threshold 0) a non-zero weight never goes to centroid 0, and
// it equals the argmin of the dense engine's distances in every configuration; fp64 weights are
// assigned in fp64.
TEST(Palette, HardAssignmentIsTheSoftAssignmentsArgmin) {
  auto w = at::tensor({0.0f, 0.01f, -0.02f, 0.4f, 0.9f}).reshape({5, 1});
  auto c = at::tensor({0.0f, 0.5f, 1.0f, -0.5f}).reshape({1, 4, 1});
  auto keep = DKMOptions(2).engine(Engine::kDense).enforce_zero(true).prune_threshold(0);
  auto idx = functional::assign(w, c, keep)[0];
  EXPECT_EQ(idx[0].item<int>(), 0);  // zero stays at the zero centroid
  EXPECT_NE(idx[1].item<int>(), 0);  // non-zero: never pruned by the assignment
  EXPECT_NE(idx[2].item<int>(), 0);
  EXPECT_EQ(functional::assign(w, c, DKMOptions(2).engine(Engine::kDense).enforce_zero(true))[0][1].item<int>(),
            0);  // bias only
  for (bool fp64 : {false, true}) {
    for (const auto& o :
         {keep, DKMOptions(3).engine(Engine::kDense), DKMOptions(3).engine(Engine::kDense).prune_threshold(0.02),
          DKMOptions(3).engine(Engine::kDense).cluster_dim(2),
          DKMOptions(2).engine(Engine::kDense).cluster_dim(2).enforce_zero(true).prune_threshold(0),
          DKMOptions(3).engine(Engine::kDense).granularity(Granularity::kPerGroupedChannel).group_size(4)}) {
      auto wt = test::llm_like({16, 24}, 7).to(fp64 ? at::kDouble : at::kFloat);
      wt.index_put_({at::indexing::Slice(0, 4)}, 0);  // some exact zeros
      auto ct = functional::init_centroids(wt, o);
      if (o.enforce_zero()) ct.select(1, 0).zero_();
      const auto l = ClusterLayout::of(wt, o);
      const auto rt = fp64 || o.cluster_dim() > 1 ? at::kDouble : at::kFloat;  // what assign computes in
      auto x = functional::to_vectors(wt.to(rt), l);
      auto d = detail::distances(x, ct.to(rt), o, detail::sparsity_block(x, o));
      EXPECT_TRUE(at::equal(functional::assign(wt, ct, o), d.argmin(-1).to(at::kByte)))
          << "bits " << o.bits() << " cluster_dim " << o.cluster_dim() << (fp64 ? " fp64" : " fp32");
    }
  }
  // fp64 weights are not rounded to fp32 first: values 1e-9 apart go to different centroids.
  auto w64 = at::tensor({0.5 - 1e-9, 0.5 + 1e-9}, at::kDouble).reshape({2, 1});
  auto c64 = at::tensor({0.0, 1.0}, at::kDouble).reshape({1, 2, 1});
  auto i64 = functional::assign(w64, c64, DKMOptions(1).engine(Engine::kDense).prune_threshold(0))[0];
  EXPECT_EQ(i64[0].item<int>(), 0);
  EXPECT_EQ(i64[1].item<int>(), 1);
}

TEST(Palette, CudaAssignMatchesCpuTwin) {
  EDKM_SKIP_WITHOUT_GPU();
  auto w = test::llm_like({256, 1000}, 4);
  auto o = DKMOptions(4).engine(Engine::kDense).granularity(Granularity::kPerGroupedChannel).group_size(32);
  auto c = functional::init_centroids(w, o);
  auto cpu = functional::assign(w, c, o);
  auto gpu = functional::assign(w.cuda(), c.cuda(), o);
  EXPECT_TRUE(at::equal(cpu, gpu.cpu()));
}

}  // namespace
}  // namespace edkm
