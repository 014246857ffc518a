// edkm/dkm/kmeans.h and init_centroids: exact 1-D k-means and k-means++.
#include <edkm/dkm/dkm.h>
#include <edkm/dkm/kmeans.h>

#include <algorithm>
#include <random>

#include "test_util.h"

namespace edkm {
namespace {

double sse(const std::vector<double>& v, const std::vector<double>& w, const std::vector<double>& c) {
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    double best = 1e300;
    for (double cj : c) best = std::min(best, (v[i] - cj) * (v[i] - cj));
    s += w[i] * best;
  }
  return s;
}

// Exhaustive optimum over all ways to cut sorted values into k contiguous runs.
double brute_force(const std::vector<double>& v, const std::vector<double>& w, int k, size_t start = 0) {
  if (k == 1) {
    double sw = 0, s1 = 0;
    for (size_t i = start; i < v.size(); ++i) sw += w[i], s1 += w[i] * v[i];
    double m = s1 / sw, s = 0;
    for (size_t i = start; i < v.size(); ++i) s += w[i] * (v[i] - m) * (v[i] - m);
    return s;
  }
  double best = 1e300;
  for (size_t cut = start + 1; cut + (k - 1) <= v.size(); ++cut) {
    double sw = 0, s1 = 0;
    for (size_t i = start; i < cut; ++i) sw += w[i], s1 += w[i] * v[i];
    double m = s1 / sw, s = 0;
    for (size_t i = start; i < cut; ++i) s += w[i] * (v[i] - m) * (v[i] - m);
    best = std::min(best, s + brute_force(v, w, k - 1, cut));
  }
  return best;
}

TEST(KMeans, Optimal1DEqualsExhaustiveSearch) {
  std::mt19937_64 rng(7);
  std::student_t_distribution<double> t(3.0);
  std::uniform_int_distribution<int> count(1, 9);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<double> v(14), w(14);
    for (auto& x : v) x = t(rng);
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    for (auto& x : w) x = count(rng);
    w.resize(v.size());
    for (int k : {1, 2, 3, 4, 5}) {
      auto c = kmeans::optimal_1d(v.data(), w.data(), static_cast<int64_t>(v.size()), k);
      ASSERT_EQ(c.size(), static_cast<size_t>(k));
      EXPECT_NEAR(sse(v, w, c), brute_force(v, w, k), 1e-9) << "trial " << trial << " k " << k;
    }
  }
}

TEST(KMeans, Optimal1DFewerValuesThanClusters) {
  std::vector<double> v{-1, 0.5, 2}, w{1, 1, 1};
  auto c = kmeans::optimal_1d(v.data(), w.data(), 3, 8);
  ASSERT_EQ(c.size(), 8u);
  EXPECT_EQ(sse(v, w, c), 0.0);
}

TEST(KMeans, Optimal1DRejectsUnsortedValues) {
  std::vector<double> v{1, 0}, w{1, 1};
  EXPECT_THROW(kmeans::optimal_1d(v.data(), w.data(), 2, 1), c10::Error);
  std::vector<double> s{0, 1}, zero{0, 0}, negative{1, -1};
  test::expect_error([&] { kmeans::optimal_1d(s.data(), zero.data(), 2, 1); }, {"all zero"});
  test::expect_error([&] { kmeans::optimal_1d(s.data(), negative.data(), 2, 1); }, {"negative or not finite"});
  const auto x = at::randn({5, 1}, at::kDouble), ones = at::ones({5}, at::kDouble);
  test::expect_error([&] { kmeans::kmeans_plus_plus(x, ones, 0, 1); }, {"k >= 1"});
  test::expect_error([&] { kmeans::kmeans_plus_plus(x, at::ones({4}, at::kDouble), 2, 1); }, {"n weights"});
}

TEST(KMeans, Binned1DIsNearOptimalAndExactWhenItFits) {
  std::mt19937_64 rng(5);
  std::student_t_distribution<double> t(4.0);
  std::vector<double> v(20000), w(20000);
  for (auto& x : v) x = 0.02 * t(rng);
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  w.resize(v.size());
  for (size_t i = 0; i < w.size(); ++i) w[i] = 1.0 + static_cast<double>(i % 3);
  const auto u = static_cast<int64_t>(v.size());
  for (int64_t k : {3, 8, 16}) {
    const auto exact = kmeans::optimal_1d(v.data(), w.data(), u, k);
    EXPECT_EQ(kmeans::binned_1d(v.data(), w.data(), u, k, u, 100), exact);  // fits: the exact DP
    const auto binned = kmeans::binned_1d(v.data(), w.data(), u, k, 256, 100);
    const double opt = sse(v, w, exact), got = sse(v, w, binned);
    EXPECT_GE(got, opt * (1 - 1e-12));
    EXPECT_LE(got, opt * 1.01) << "k " << k;  // within 1% of the optimum from 256 runs
    EXPECT_TRUE(std::is_sorted(binned.begin(), binned.end()));
  }
}

TEST(KMeans, PlusPlusIsSeededAndLloydImproves) {
  auto x = test::llm_like({500, 2}, 3, at::kDouble);
  auto w = at::ones({500}, x.options());
  auto a = kmeans::kmeans_plus_plus(x, w, 8, 1), b = kmeans::kmeans_plus_plus(x, w, 8, 1);
  EXPECT_TRUE(at::equal(a, b));
  auto cost = [&](const at::Tensor& c) {
    auto idx = kmeans::nearest(x, c);
    return (x - c.index_select(0, idx)).square().sum().item<double>();
  };
  EXPECT_LT(cost(kmeans::lloyd(x, w, a, 50)), cost(a));
}

TEST(InitCentroids, AutoUsesExactInitForHistograms) {
  // 16-bit weights: at most 65536 distinct values per group, so auto == opt1d.
  auto w = test::llm_like({64, 128}, 5, at::kBFloat16);
  auto o = DKMOptions(3).engine(Engine::kDense);
  auto a = functional::init_centroids(w, o);
  auto e = functional::init_centroids(w, DKMOptions(o).init(KMeansInit::kOptimal1D));
  EXPECT_TRUE(at::equal(a, e));
  auto k = functional::init_centroids(w, DKMOptions(o).init(KMeansInit::kKMeansPlusPlus));
  auto sse_of = [&](const at::Tensor& c) {
    auto x = w.to(at::kDouble).reshape({-1, 1});
    return std::get<0>((x - c[0].to(at::kDouble).t()).square().min(1)).sum().item<double>();
  };
  EXPECT_LE(sse_of(a), sse_of(k) * (1 + 1e-6));  // exact init is at least as good
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{1, 8, 1}));
}

TEST(InitCentroids, GroupedAndEnforceZero) {
  auto w = test::llm_like({16, 32}, 9);
  auto o = DKMOptions(2)
               .engine(Engine::kDense)
               .granularity(Granularity::kPerGroupedChannel)
               .group_size(4)
               .enforce_zero(true);
  auto c = functional::init_centroids(w, o);
  EXPECT_EQ(c.sizes(), (std::vector<int64_t>{4, 4, 1}));
  EXPECT_TRUE((c.select(1, 0) == 0).all().item<bool>());
}

}  // namespace
}  // namespace edkm
