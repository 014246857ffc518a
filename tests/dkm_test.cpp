// edkm/dkm/dkm.h: options, layout, the dense engine (finite differences, semantics, bad input).
#include <edkm/dkm/dkm.h>

#include "test_util.h"

namespace edkm {
namespace {

using test::llm_like;
using test::max_rel;

// Plain re-statement of DESIGN.md §1 for one group in fp64, for cross-checking the engine.
at::Tensor naive_dkm(const at::Tensor& w, at::Tensor c, const DKMOptions& o, int64_t* iters = nullptr) {
  auto x = w.reshape({-1, 1});
  at::Tensor a;
  c = c.reshape({-1, 1});
  double last = 0;
  for (int64_t t = 0; t < o.max_iter(); ++t) {
    auto d = (x - c.t()).square();
    auto shift = at::zeros_like(d);
    shift.select(1, 0).fill_(o.prune_threshold());
    d = d - shift;
    a = at::softmax(-d / o.tau(), 1).clamp_min(o.zero_threshold());
    c = at::matmul(a.t(), x) / a.sum(0).unsqueeze(1);
    const double inertia = std::get<0>(d.min(1)).sum().item<double>();
    if (iters) *iters = t + 1;
    if (last != 0 && std::abs(last - inertia) <= o.epsilon()) break;
    last = inertia;
  }
  return at::matmul(a, c).reshape(w.sizes());
}

TEST(DKMOptions, DefaultsEqualTheReference) {
  DKMOptions o;
  EXPECT_EQ(o.bits(), 4);
  EXPECT_EQ(o.n_clusters(), 16);
  EXPECT_DOUBLE_EQ(o.tau(), 1e-4);
  EXPECT_EQ(o.max_iter(), 3);
  EXPECT_DOUBLE_EQ(o.epsilon(), 1e-4);
  EXPECT_DOUBLE_EQ(o.zero_threshold(), 1e-7);
  EXPECT_DOUBLE_EQ(o.prune_threshold(), 1e-7);
  EXPECT_FALSE(o.enforce_zero());
  EXPECT_EQ(o.granularity(), Granularity::kPerTensor);
  EXPECT_FALSE(o.per_channel_scale());
  EXPECT_EQ(o.cluster_dim(), 1);
  EXPECT_EQ(o.milestone(), 0);
  EXPECT_EQ(o.weight_threshold(), 2048);
  EXPECT_EQ(o.engine(), Engine::kAuto);  // not a coremltools option: the engine that saves memory
  EXPECT_NO_THROW(o.validate());
}

TEST(DKMOptions, InvalidOptionsNameTheProblem) {
  auto expect_error = [](const DKMOptions& o, const std::string& what) {
    test::expect_error([&] { o.validate(); }, {what});
  };
  expect_error(DKMOptions(0).engine(Engine::kDense), "bits must be in 1..8");
  expect_error(DKMOptions(9).engine(Engine::kDense), "bits must be in 1..8");
  expect_error(DKMOptions(3).engine(Engine::kDense).tau(0), "tau");
  expect_error(DKMOptions(3).engine(Engine::kDense).max_iter(0), "max_iter");
  expect_error(DKMOptions(3).engine(Engine::kDense).granularity(Granularity::kPerGroupedChannel), "group_size");
  expect_error(DKMOptions(3).engine(Engine::kDense).cluster_dim(0), "cluster_dim");
  expect_error(DKMOptions(3).engine(Engine::kDense).zero_threshold(1.5), "zero_threshold");
  expect_error(DKMOptions(3).engine(Engine::kDense).init(KMeansInit::kOptimal1D).cluster_dim(2), "opt1d");
}

TEST(DKMBadInput, ClearErrors) {
  auto w = llm_like({8, 16}, 1);
  auto c = functional::init_centroids(w, DKMOptions(2).engine(Engine::kDense));
  auto expect_error = [&](const at::Tensor& weight, const at::Tensor& cent, const DKMOptions& o,
                          const std::string& what) {
    test::expect_error([&] { functional::dkm_cluster(weight, cent, o); }, {what});
  };
  auto nan_w = w.clone();
  nan_w[0][0] = std::numeric_limits<float>::quiet_NaN();
  expect_error(nan_w, c, DKMOptions(2).engine(Engine::kDense), "NaN or Inf");
  auto inf_w = w.clone();
  inf_w[1][2] = std::numeric_limits<float>::infinity();
  expect_error(inf_w, c, DKMOptions(2).engine(Engine::kDense), "NaN or Inf");
  expect_error(at::empty({0, 16}), c, DKMOptions(2).engine(Engine::kDense), "empty");
  expect_error(at::ones({8, 16}, at::kInt), c, DKMOptions(2).engine(Engine::kDense), "floating-point");
  expect_error(at::Tensor(), c, DKMOptions(2).engine(Engine::kDense), "undefined");
  expect_error(w, c, DKMOptions(9).engine(Engine::kDense), "bits must be in 1..8");
  expect_error(w, c, DKMOptions(2).engine(Engine::kDense).granularity(Granularity::kPerGroupedChannel).group_size(3),
               "does not divide");
  expect_error(w, c.slice(1, 0, 3), DKMOptions(2).engine(Engine::kDense), "centroids must have shape");
  expect_error(w, c, DKMOptions(2).engine(Engine::kDense).per_channel_scale(true), "no scale was given");
  // A scale the options do not announce: the table engine would drop it, the others apply it.
  const at::Tensor scale = functional::channel_scale(w, ScaleScheme::kAbs);
  for (Engine e : {Engine::kDense, Engine::kTable, Engine::kStreaming, Engine::kAuto}) {
    test::expect_error([&] { functional::dkm_cluster(w.to(at::kBFloat16), c, DKMOptions(2).engine(e), scale); },
                       {"a scale was given but per_channel_scale is not set"});
  }
  if (test::has_gpu()) expect_error(w.cuda(), c, DKMOptions(2).engine(Engine::kDense), "same device");
  // mismatched devices through a meta tensor on machines without a GPU
  expect_error(w, c.to(at::kMeta), DKMOptions(2).engine(Engine::kDense), "same device");
}

TEST(DKMDense, MatchesPlainRestatement) {
  for (int64_t bits : {1, 2, 3, 4}) {
    auto w = llm_like({32, 24}, 10 + bits, at::kDouble);
    auto o = DKMOptions(bits).engine(Engine::kDense).epsilon(0);
    auto c = functional::init_centroids(w, o);
    int64_t iters = 0;
    auto expect = naive_dkm(w, c[0], o, &iters);
    auto out = functional::dkm_cluster(w, c, o);
    EXPECT_LT(max_rel(out.weight, expect), 1e-12) << "bits " << bits;
    EXPECT_EQ(out.iterations, iters);
    EXPECT_EQ(out.centroids.sizes(), c.sizes());
    EXPECT_FALSE(out.centroids.requires_grad());
  }
}

TEST(DKMDense, EarlyStopFollowsInertia) {
  auto w = llm_like({64, 32}, 3, at::kDouble) * 50;  // unit scale: near-hard attention converges fast
  auto o = DKMOptions(3).engine(Engine::kDense).max_iter(50).epsilon(1e-4);
  auto c = functional::init_centroids(w, o);
  int64_t iters = 0;
  auto expect = naive_dkm(w, c[0], o, &iters);
  auto out = functional::dkm_cluster(w, c, o);
  EXPECT_EQ(out.iterations, iters);
  EXPECT_LT(out.iterations, 50) << "optimal init should converge early";
  EXPECT_LT(max_rel(out.weight, expect), 1e-12);
}

TEST(DKMDense, GroupsStopIndependently) {
  // Grouped clustering equals clustering every group on its own (the reference's sequential mode).
  auto w = llm_like({12, 20}, 4, at::kDouble);
  w.slice(0, 8, 12).mul_(30);  // a group on another scale converges differently
  auto o = DKMOptions(2)
               .engine(Engine::kDense)
               .granularity(Granularity::kPerGroupedChannel)
               .group_size(4)
               .max_iter(20)
               .epsilon(1e-9);
  auto c = functional::init_centroids(w, o);
  auto out = functional::dkm_cluster(w, c, o);
  for (int64_t g = 0; g < 3; ++g) {
    auto wg = w.slice(0, 4 * g, 4 * g + 4);
    auto og = functional::dkm_cluster(wg, c.slice(0, g, g + 1), DKMOptions(o).granularity(Granularity::kPerTensor));
    EXPECT_LT(max_rel(out.weight.slice(0, 4 * g, 4 * g + 4), og.weight), 1e-12) << "group " << g;
  }
}

TEST(DKMDense, SoftWeightsAreConvexCombinationsOfCentroids) {
  auto w = llm_like({64, 64}, 5);
  auto o = DKMOptions(3).engine(Engine::kDense);
  auto c = functional::init_centroids(w, o);
  auto out = functional::dkm_cluster(w, c, o);
  const double lo = out.centroids.min().item<double>(), hi = out.centroids.max().item<double>();
  EXPECT_GE(out.weight.min().item<double>(), lo - 1e-6);
  EXPECT_LE(out.weight.max().item<double>(), hi + 1e-6);
  EXPECT_EQ(out.weight.dtype(), w.dtype());
  // a cold temperature makes the soft weight the hard assignment
  auto cold = functional::dkm_cluster(w, c, DKMOptions(o).tau(1e-9).prune_threshold(0)).weight;
  auto d = (cold.reshape({-1, 1}) - c[0].reshape({1, -1})).abs();
  EXPECT_LT(std::get<0>(d.min(1)).max().item<double>(), 1e-3);
}

TEST(DKMDense, EnforceZeroKeepsZeroCentroid) {
  auto w = llm_like({16, 32}, 6);
  w.masked_fill_(w.abs() < 0.01, 0.0);  // a pruned weight
  const auto nonzero = w != 0;
  for (double prune : {0.0, 1e-7}) {
    auto o = DKMOptions(2).engine(Engine::kDense).enforce_zero(true).prune_threshold(prune).tau(1e-7);
    auto c = functional::init_centroids(w, o);
    EXPECT_EQ(c[0][0][0].item<double>(), 0.0);
    auto out = functional::dkm_cluster(w, c, o);
    EXPECT_EQ(out.centroids[0][0][0].item<double>(), 0.0);
    EXPECT_TRUE((out.weight.masked_select(~nonzero).abs() < 1e-6).all().item<bool>()) << "zeros stay zero";
    const bool nonzero_kept = (out.weight.masked_select(nonzero).abs() > 1e-4).all().item<bool>();
    // prune_threshold == 0 keeps the sparsity exact: no non-zero weight may join centroid 0
    if (prune == 0) EXPECT_TRUE(nonzero_kept);
  }
}

TEST(DKMDense, LowPrecisionWeights) {
  for (auto dt : {at::kBFloat16, at::kHalf}) {
    auto w = llm_like({32, 64}, 7, dt);
    auto o = DKMOptions(3).engine(Engine::kDense);
    auto c = functional::init_centroids(w, o);
    EXPECT_EQ(c.scalar_type(), at::kFloat);
    auto wr = w.clone().requires_grad_(true);
    auto out = functional::dkm_cluster(wr, c, o);
    EXPECT_EQ(out.weight.scalar_type(), dt);
    out.weight.to(at::kFloat).square().sum().backward();
    ASSERT_TRUE(wr.grad().defined());
    EXPECT_TRUE(at::isfinite(wr.grad().to(at::kFloat)).all().item<bool>());
    // same as clustering the fp32 upcast
    auto ref = functional::dkm_cluster(w.to(at::kFloat), c, o);
    EXPECT_LT(max_rel(out.weight, ref.weight.to(dt)), 1e-2);
  }
}

// The centroid update sums a group's n weights: in fp32 it must not drift with n. With bmm (a
// running fp32 sum, as coremltools' matmul) the fp32 centroids were 2.5e-4 off fp64 at n = 262,144
// and the soft weights 2e-4 (8e-3 at 16.8M weights); summed in a tree, ~1e-7. Every engine here
// against the fp64 dense engine: dense and streaming on fp32 weights, the table on bf16 ones.
TEST(DKMDense, Fp32CentroidSumsDoNotDriftOnLargeGroups) {
  auto w = at::randn({512, 512}, at::TensorOptions().dtype(at::kFloat)) * 0.02;
  const auto o = DKMOptions(3).epsilon(0).max_iter(3);
  const auto c = functional::init_centroids(w, o);
  auto run = [&](const at::Tensor& weight, Engine e) {
    auto wr = weight.clone().requires_grad_(true);
    auto out =
        functional::dkm_cluster(wr, e == Engine::kDense && weight.scalar_type() == at::kDouble ? c.to(at::kDouble) : c,
                                DKMOptions(o).engine(e));
    (out.weight.to(at::kDouble) * at::cos(at::arange(w.numel(), at::kDouble).view(w.sizes()))).sum().backward();
    return std::make_tuple(out.weight.detach(), out.centroids, wr.grad());
  };
  for (const auto dt : {at::kFloat, at::kBFloat16}) {
    const at::Tensor wd = w.to(dt);
    const auto [w64, c64, g64] = run(wd.to(at::kDouble), Engine::kDense);
    for (const Engine e : {Engine::kDense, Engine::kStreaming, Engine::kTable}) {
      if (dt == at::kFloat && e == Engine::kTable) continue;  // clusters fp32 weights' bf16 rounding
      const auto [ws, cs, gs] = run(wd, e);
      const double tol = dt == at::kFloat ? 1e-6 : 1e-2;  // W_soft comes back in bf16
      EXPECT_LT(max_rel(cs, c64), 1e-6) << to_string(e) << " " << dt;
      EXPECT_LT(max_rel(ws, w64), tol) << to_string(e) << " " << dt;
      EXPECT_LT(max_rel(gs, g64), dt == at::kFloat ? 1e-5 : 1e-2) << to_string(e) << " " << dt;
    }
  }
}

TEST(DKMDense, CudaMatchesCpu) {
  EDKM_SKIP_WITHOUT_GPU();
  auto w = llm_like({64, 48}, 8);
  auto o = DKMOptions(3).engine(Engine::kDense);
  auto c = functional::init_centroids(w, o);
  auto wc = w.cuda().requires_grad_(true), wh = w.clone().requires_grad_(true);
  auto g = llm_like({64, 48}, 9);
  auto oc = functional::dkm_cluster(wc, c.cuda(), o);
  auto oh = functional::dkm_cluster(wh, c, o);
  (oc.weight * g.cuda()).sum().backward();
  (oh.weight * g).sum().backward();
  EXPECT_LT(max_rel(oc.weight.cpu(), oh.weight), 1e-5);
  EXPECT_LT(max_rel(wc.grad().cpu(), wh.grad()), 1e-4);
}

// --- finite differences in fp64 -------------------------------------------------------------

struct FDCase {
  std::string name;
  DKMOptions options;
  std::vector<int64_t> shape;
  double scale_of_weights;
  bool per_channel_scale;
};

void PrintTo(const FDCase& c, std::ostream* os) { *os << c.name; }

class DKMFiniteDifference : public ::testing::TestWithParam<FDCase> {};

TEST_P(DKMFiniteDifference, GradientMatches) {
  const auto& p = GetParam();
  auto w = llm_like(p.shape, 42, at::kDouble) * (p.scale_of_weights / 0.02);
  at::Tensor scale;
  if (p.per_channel_scale) scale = functional::channel_scale(w, ScaleScheme::kAbs).to(at::kDouble);
  auto c = functional::init_centroids(w, p.options, scale);
  auto g = llm_like(p.shape, 43, at::kDouble) / 0.02;
  auto loss = [&](const at::Tensor& x) {
    return (functional::dkm_cluster(x, c, p.options, scale).weight * g).sum().item<double>();
  };
  auto wr = w.clone().requires_grad_(true);
  (functional::dkm_cluster(wr, c, p.options, scale).weight * g).sum().backward();
  auto analytic = wr.grad();
  auto flat = w.reshape({-1});
  const double h = 1e-6 * p.scale_of_weights;
  double worst = 0;
  for (int64_t i = 0; i < flat.numel(); ++i) {
    auto plus = w.clone(), minus = w.clone();
    plus.view({-1})[i] += h;
    minus.view({-1})[i] -= h;
    const double numeric = (loss(plus) - loss(minus)) / (2 * h);
    const double a = analytic.view({-1})[i].item<double>();
    const double err = std::abs(a - numeric) / (1e-6 + std::abs(numeric));
    worst = std::max(worst, err);
    EXPECT_NEAR(a, numeric, 1e-6 + 1e-5 * std::abs(numeric)) << p.name << " element " << i;
  }
  RecordProperty("worst_relative_error", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(
    OptionSets, DKMFiniteDifference,
    ::testing::Values(
        FDCase{"bits2_tau",
               DKMOptions(2).engine(Engine::kDense).tau(0.05).epsilon(0).zero_threshold(0),
               {4, 6},
               1.0,
               false},
        FDCase{"bits3_default_clamp", DKMOptions(3).engine(Engine::kDense).tau(0.02).epsilon(0), {6, 5}, 1.0, false},
        FDCase{"bits1_one_iter", DKMOptions(1).engine(Engine::kDense).tau(0.1).max_iter(1), {5, 4}, 1.0, false},
        FDCase{"grouped",
               DKMOptions(2)
                   .engine(Engine::kDense)
                   .tau(0.05)
                   .epsilon(0)
                   .granularity(Granularity::kPerGroupedChannel)
                   .group_size(2),
               {4, 6},
               1.0,
               false},
        FDCase{"enforce_zero",
               DKMOptions(2).engine(Engine::kDense).tau(0.05).epsilon(0).enforce_zero(true),
               {4, 6},
               1.0,
               false},
        FDCase{"prune_threshold",
               DKMOptions(2).engine(Engine::kDense).tau(0.05).epsilon(0).prune_threshold(0.05),
               {4, 6},
               1.0,
               false},
        FDCase{"per_channel_scale",
               DKMOptions(2).engine(Engine::kDense).tau(0.05).epsilon(0).per_channel_scale(true),
               {4, 6},
               1.0,
               true},
        FDCase{
            "vector_dim2", DKMOptions(2).engine(Engine::kDense).tau(0.1).epsilon(0).cluster_dim(2), {4, 6}, 1.0, false},
        FDCase{"llm_scale_default_tau", DKMOptions(3).engine(Engine::kDense).epsilon(0), {4, 8}, 0.02, false}),
    [](const auto& info) { return info.param.name; });

// --- layout ------------------------------------------------------------------------------------

TEST(ClusterLayout, VectorsRoundTrip) {
  for (int64_t d : {1, 2, 4}) {
    auto w = llm_like({8, 3, 2}, 11);
    auto o =
        DKMOptions(2).engine(Engine::kDense).cluster_dim(d).granularity(Granularity::kPerGroupedChannel).group_size(4);
    auto l = ClusterLayout::of(w, o);
    EXPECT_EQ(l.groups, 2);
    EXPECT_EQ(l.vectors * d, 24);
    auto s = functional::channel_scale(w, ScaleScheme::kMinMax);
    auto v = functional::to_vectors(w, l, s);
    EXPECT_EQ(v.sizes(), (std::vector<int64_t>{2, 24 / d, d}));
    EXPECT_TRUE(at::allclose(functional::from_vectors(v, w.sizes(), l, s), w));
    if (d == 2) {  // vectors pair consecutive output channels at the same position
      EXPECT_TRUE(at::allclose(v[0][0][0], w[0][0][0] / s[0][0]));
      EXPECT_TRUE(at::allclose(v[0][0][1], w[1][0][0] / s[1][0]));
    }
  }
}

}  // namespace
}  // namespace edkm
