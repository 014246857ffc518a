// Centroid initialisation: exact 1-D optimal k-means over the value histogram, and weighted
// k-means++ seeding followed by weighted Lloyd iterations. Runs once per layer, on the CPU in fp64.
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/_unique2.h>
#include <ATen/ops/argmin.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "dkm/internal.h"
#include "edkm/dkm/kmeans.h"

namespace edkm {
namespace {

// Prefix sums of a weighted, sorted 1-D histogram; cost(a, b) is the within-cluster sum of
// squares of the values [a, b).
struct Prefix {
  std::vector<double> w, s1, s2;
  explicit Prefix(const double* v, const double* c, int64_t u) : w(u + 1, 0), s1(u + 1, 0), s2(u + 1, 0) {
    for (int64_t i = 0; i < u; ++i) {
      w[i + 1] = w[i] + c[i];
      s1[i + 1] = s1[i] + c[i] * v[i];
      s2[i + 1] = s2[i] + c[i] * v[i] * v[i];
    }
  }
  double cost(int64_t a, int64_t b) const {
    const double n = w[b] - w[a];
    if (n <= 0) return 0;
    const double s = s1[b] - s1[a];
    return std::max(0.0, (s2[b] - s2[a]) - s * s / n);
  }
  double mean(int64_t a, int64_t b) const { return (s1[b] - s1[a]) / (w[b] - w[a]); }
};

// dp_cur[m] = min_{j in [lo_j, m-1]} dp_prev[j] + cost(j, m); the optimal split is monotone in m,
// so divide and conquer finds all of them in O(U log U) per cluster count.
void solve_layer(const Prefix& p, const std::vector<double>& prev, std::vector<double>& cur, int32_t* split, int64_t lo,
                 int64_t hi, int64_t opt_lo, int64_t opt_hi) {
  if (lo > hi) return;
  const int64_t mid = (lo + hi) / 2;
  double best = std::numeric_limits<double>::infinity();
  int64_t best_j = opt_lo;
  for (int64_t j = opt_lo; j <= std::min(mid - 1, opt_hi); ++j) {
    const double v = prev[j] + p.cost(j, mid);
    if (v < best) best = v, best_j = j;
  }
  cur[mid] = best;
  split[mid] = static_cast<int32_t>(best_j);
  solve_layer(p, prev, cur, split, lo, mid - 1, opt_lo, best_j);
  solve_layer(p, prev, cur, split, mid + 1, hi, best_j, opt_hi);
}

}  // namespace

namespace kmeans {

std::vector<double> optimal_1d(const double* values, const double* counts, int64_t u, int64_t k) {
  TORCH_CHECK(u >= 1 && k >= 1, "edkm: optimal_1d needs at least one value and one cluster");
  for (int64_t i = 1; i < u; ++i)
    TORCH_CHECK(values[i] > values[i - 1], "edkm: optimal_1d needs strictly increasing values");
  double total = 0;
  for (int64_t i = 0; i < u; ++i) {
    TORCH_CHECK(std::isfinite(values[i]) && std::isfinite(counts[i]) && counts[i] >= 0, "edkm: optimal_1d: value ", i,
                " (", values[i], ") or its count (", counts[i], ") is negative or not finite");
    total += counts[i];
  }
  TORCH_CHECK(total > 0, "edkm: optimal_1d: the counts are all zero");
  std::vector<double> centers;
  if (u <= k) {  // every distinct value is its own centroid; the rest repeat the largest
    centers.assign(values, values + u);
    centers.resize(k, values[u - 1]);
    return centers;
  }
  Prefix p(values, counts, u);
  std::vector<double> prev(u + 1), cur(u + 1);
  for (int64_t m = 0; m <= u; ++m) prev[m] = p.cost(0, m);
  std::vector<int32_t> split(static_cast<size_t>(k) * (u + 1), 0);
  for (int64_t c = 1; c < k; ++c) {
    std::fill(cur.begin(), cur.end(), std::numeric_limits<double>::infinity());
    // c + 1 clusters over a prefix of m values need m >= c + 1 and the last split j >= c.
    solve_layer(p, prev, cur, split.data() + c * (u + 1), c + 1, u, c, u - 1);
    std::swap(prev, cur);
  }
  std::vector<int64_t> bounds(k + 1);
  bounds[k] = u;
  for (int64_t c = k - 1; c >= 1; --c) bounds[c] = split[c * (u + 1) + bounds[c + 1]];
  bounds[0] = 0;
  centers.resize(k);
  for (int64_t c = 0; c < k; ++c) centers[c] = p.mean(bounds[c], bounds[c + 1]);
  return centers;
}

std::vector<double> binned_1d(const double* values, const double* counts, int64_t u, int64_t k, int64_t max_bins,
                              int64_t max_iter) {
  TORCH_CHECK(max_bins >= 1, "edkm: binned_1d needs max_bins >= 1, got ", max_bins);
  if (u <= max_bins) return optimal_1d(values, counts, u, k);
  Prefix p(values, counts, u);
  // Runs of consecutive values, closed when they hold 2U/B values or span 2/B of the range, so
  // that dense regions and sparse tails both keep resolution; at most B runs.
  std::vector<double> bv, bc;  // weighted mean and total count of every run
  const int64_t half = std::max<int64_t>(1, (max_bins - 1) / 2);
  const int64_t max_count = (u + half - 1) / half;
  const double max_span = (values[u - 1] - values[0]) / static_cast<double>(half);
  auto close = [&](int64_t lo, int64_t hi) {
    if (p.w[hi] - p.w[lo] <= 0) return;
    const double m = p.mean(lo, hi);
    if (!bv.empty() && !(m > bv.back())) {  // rounding: merge into the previous run
      bc.back() += p.w[hi] - p.w[lo];
      return;
    }
    bv.push_back(m);
    bc.push_back(p.w[hi] - p.w[lo]);
  };
  int64_t lo = 0;
  for (int64_t i = 1; i < u; ++i)
    if (i - lo >= max_count || values[i] - values[lo] > max_span) {
      close(lo, i);
      lo = i;
    }
  close(lo, u);
  auto centers = optimal_1d(bv.data(), bc.data(), static_cast<int64_t>(bv.size()), k);
  // 1-D Lloyd: a centre's cluster is the run of values between the midpoints to its neighbours
  // (ties go to the lower centre, as nearest() does).
  std::vector<int64_t> bounds(static_cast<size_t>(k + 1)), prev;
  for (int64_t it = 0; it < max_iter; ++it) {
    bounds[0] = 0;
    bounds[k] = u;
    for (int64_t j = 1; j < k; ++j) {
      const double mid = 0.5 * (centers[j - 1] + centers[j]);
      bounds[j] = std::max(bounds[j - 1], static_cast<int64_t>(std::upper_bound(values, values + u, mid) - values));
    }
    if (bounds == prev) break;
    prev = bounds;
    for (int64_t j = 0; j < k; ++j)
      if (p.w[bounds[j + 1]] - p.w[bounds[j]] > 0) centers[j] = p.mean(bounds[j], bounds[j + 1]);  // empty: stays
  }
  return centers;
}

at::Tensor kmeans_plus_plus(const at::Tensor& x, const at::Tensor& weights, int64_t k, uint64_t seed) {
  // x: n x d fp64 CPU, weights: n fp64 CPU
  TORCH_CHECK(x.defined() && x.dim() == 2 && weights.defined() && weights.dim() == 1 && weights.size(0) == x.size(0),
              "edkm: k-means++ needs points n x d and n weights, got ", x.defined() ? x.sizes() : at::IntArrayRef{},
              " and ", weights.defined() ? weights.sizes() : at::IntArrayRef{});
  TORCH_CHECK(k >= 1, "edkm: k-means++ needs k >= 1, got ", k);
  const int64_t n = x.size(0);
  TORCH_CHECK(n >= 1, "edkm: k-means++ needs at least one point");
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  auto pick = [&](const at::Tensor& mass) {
    auto cdf = at::cumsum(mass, 0);
    const double total = cdf[-1].item<double>();
    if (!(total > 0)) return int64_t{-1};
    auto r = at::scalar_tensor(uni(rng) * total, cdf.options()).reshape({1});
    return std::min<int64_t>(at::searchsorted(cdf, r, /*out_int32=*/false, /*right=*/true).item<int64_t>(), n - 1);
  };
  std::vector<at::Tensor> centers;
  centers.push_back(x[pick(weights)]);
  auto min_d2 = (x - centers[0]).square().sum(1);
  for (int64_t c = 1; c < k; ++c) {
    int64_t i = pick(min_d2 * weights);
    if (i < 0) {  // fewer distinct points than clusters: repeat the last centre
      centers.push_back(centers.back());
      continue;
    }
    centers.push_back(x[i]);
    min_d2 = at::minimum(min_d2, (x - centers.back()).square().sum(1));
  }
  return at::stack(centers);
}

at::Tensor nearest(const at::Tensor& x, const at::Tensor& c) {
  // argmin_j |x_i - c_j|^2 in chunks, never n x K at once for large n.
  constexpr int64_t kChunk = 1 << 16;
  auto out = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  auto c2 = c.square().sum(1);
  for (int64_t s = 0; s < x.size(0); s += kChunk) {
    auto xs = x.slice(0, s, std::min(x.size(0), s + kChunk));
    auto d = c2.unsqueeze(0) - 2 * at::matmul(xs, c.t());
    out.slice(0, s, s + xs.size(0)).copy_(at::argmin(d, 1));
  }
  return out;
}

at::Tensor lloyd(const at::Tensor& x, const at::Tensor& weights, at::Tensor c, int64_t max_iter) {
  at::Tensor labels;
  for (int64_t it = 0; it < max_iter; ++it) {
    auto new_labels = nearest(x, c);
    if (labels.defined() && at::equal(labels, new_labels)) break;
    labels = new_labels;
    auto mass = at::zeros({c.size(0)}, x.options()).index_add_(0, labels, weights);
    auto sums = at::zeros_like(c).index_add_(0, labels, x * weights.unsqueeze(1));
    auto filled = (mass > 0).unsqueeze(1);
    c = at::where(filled, sums / mass.clamp_min(1e-300).unsqueeze(1), c);  // empty clusters stay
  }
  return c;
}

}  // namespace kmeans

namespace functional {
namespace {

// The distinct values of a 1-D double tensor in increasing order and how often each occurs (both
// double, contiguous): a plain sort and one counting sweep, several times faster than
// at::_unique2's key-index sort. With a NaN (no order) _unique2 decides, as before.
std::pair<at::Tensor, at::Tensor> sorted_unique(const at::Tensor& values) {
  const auto v = values.contiguous();
  const double* p = v.data_ptr<double>();
  const int64_t n = v.numel();
  if (std::any_of(p, p + n, [](double a) { return std::isnan(a); })) {
    auto [vals, inverse, counts] = at::_unique2(v, /*sorted=*/true, false, true);
    return {vals.contiguous(), counts.to(at::kDouble).contiguous()};
  }
  std::vector<double> sorted(p, p + n);
  std::sort(sorted.begin(), sorted.end());
  std::vector<double> vals, counts;
  for (int64_t i = 0; i < n;) {
    int64_t j = i + 1;
    while (j < n && sorted[static_cast<size_t>(j)] == sorted[static_cast<size_t>(i)]) ++j;
    vals.push_back(sorted[static_cast<size_t>(i)]);
    counts.push_back(static_cast<double>(j - i));
    i = j;
  }
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const auto u = static_cast<int64_t>(vals.size());
  return {at::from_blob(vals.data(), {u}, opts).clone(), at::from_blob(counts.data(), {u}, opts).clone()};
}

// The centroids of one group (xg: n x d of the vectors).
at::Tensor init_group(const at::Tensor& xg, const DKMOptions& options, const ClusterLayout& l, int64_t g) {
  const int64_t K = options.n_clusters();
  at::Tensor c;
  if (l.cluster_dim == 1) {
    auto [vals, cnt] = sorted_unique(xg.reshape({-1}));
    const bool opt1d = options.init() == KMeansInit::kOptimal1D ||
                       (options.init() == KMeansInit::kAuto && vals.numel() <= options.opt1d_max_unique());
    if (opt1d) {
      auto centers = kmeans::optimal_1d(vals.data_ptr<double>(), cnt.data_ptr<double>(), vals.numel(), K);
      c = at::from_blob(centers.data(), {K, 1}, at::kDouble).clone();
    } else if (options.init() == KMeansInit::kAuto) {  // too many values for the exact DP: binned
      auto centers = kmeans::binned_1d(vals.data_ptr<double>(), cnt.data_ptr<double>(), vals.numel(), K,
                                       options.opt1d_max_unique(), options.init_max_iter());
      c = at::from_blob(centers.data(), {K, 1}, at::kDouble).clone();
    } else {
      auto v = vals.reshape({-1, 1});
      c = kmeans::lloyd(v, cnt, kmeans::kmeans_plus_plus(v, cnt, K, options.seed() + g), options.init_max_iter());
    }
  } else {
    auto w = at::ones({l.vectors}, xg.options());
    c = kmeans::lloyd(xg, w, kmeans::kmeans_plus_plus(xg, w, K, options.seed() + g), options.init_max_iter());
  }
  if (options.enforce_zero()) {  // the centroid nearest to zero moves to slot 0 and becomes 0
    const int64_t z = c.square().sum(1).argmin().item<int64_t>();
    auto first = c[0].clone();
    c[z].copy_(first);
    c[0].zero_();
  }
  return c;
}

}  // namespace

at::Tensor init_centroids(const at::Tensor& weight, const DKMOptions& options, const at::Tensor& scale) {
  const auto l = ClusterLayout::of(weight, options);
  detail::check_scale(scale, weight, l, options);
  auto x = to_vectors(weight.detach().to(at::kDouble), l, scale.defined() ? scale.to(at::kDouble) : scale)
               .to(at::kCPU)
               .contiguous();  // G x n x d
  // Groups are independent (k-means++ seeds with seed + g): they run in parallel, each group's
  // result the same as in a serial loop. ATen ops inside run serially (nested parallel regions).
  std::vector<at::Tensor> per_group(static_cast<size_t>(l.groups));
  at::parallel_for(0, l.groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) per_group[static_cast<size_t>(g)] = init_group(x[g], options, l, g);
  });
  return at::stack(per_group).to(weight.device(), detail::compute_dtype(weight));
}

}  // namespace functional
}  // namespace edkm
