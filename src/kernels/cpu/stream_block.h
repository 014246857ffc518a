#pragma once
// The streaming passes for cluster_dim 1 in fp32, over blocks of kLanes weights at a time: the
// same math as stream_vector (kernels/stream_math.h, the reference and the CUDA twin's source),
// laid out lane-parallel so the compiler vectorises every loop (this header is compiled once per
// instruction set: stream_kernel_avx2.cpp, _avx512.cpp) and the exponentials go through the
// inline vector exp of vec_exp.h (1 ulp, as SLEEF's u10). Per-lane fp64 accumulators (16 lanes folded into 8, D8),
// held by the block loop (in registers where they fit) and summed once per work item: no false
// sharing, no serial dependency through one fp64 slot. (Summing blocks in fp32 first, even only the statistics'
// positive sums over 64 weights per lane, was measured: the DKM gradient amplifies that rounding beyond the fp32 dense
// engine's own error.)
//
// Exact work skipping (`skip`). At small tau the attention row of a weight is nearly one-hot: the
// term of centroid j is exp(-(D_j - D_min) / tau), below theta = min(2^-48, zero_threshold) once
// D_j > D_min + W with W = tau ln(1 / theta). Such a term
//   - changes the softmax sum (>= 1, the largest term is 1) by less than theta, and all K of them
//     by less than 2^-40 relative: below the fp32 rounding of every probability;
//   - is clamped: A_j = max(P_j, zero_threshold) = zero_threshold exactly (theta <= zero_threshold),
//     and its clamp passes no gradient (Pbar_j = 0). Its constant share is added in closed form:
//     zero_threshold * (sum of x, of g, of c^T_j or of gamma_j / S_j over the skipped pairs);
//   - is left out of the softmax cross-gradient zbar_j = -P_j sum_k Pbar_k P_k, which is P_j < theta
//     times the size of the kept terms: at most 2^-40 relative to them (not bitwise zero).
// So a skipped pass equals the unskipped one to fp32 rounding (tests/stream_test.cpp checks bits
// 1..8, tau 1e-5..1e-2). To make whole blocks skip, a work item is processed in tiles of kTile
// weights put in value order (a counting sort into kBuckets buckets): a block then spans a narrow
// value range, and with the centroids 1..K-1 of the level sorted by value ("positions"; centroid
// 0 keeps position 0 and is always computed, it carries the prune bias and keep-sparsity), the
// centroids a block needs are one contiguous window of positions [lo, hi), found by binary search.
// Without skipping the same code runs with identity positions and the full window [1, K).
//
// Include after defining EDKM_STREAM_ISA (the namespace of this instantiation), in a translation
// unit compiled for that instruction set (vec16.h picks its 16-lane type by __AVX512F__).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cpu/stream_isa.h"
#include "kernels/cpu/vec16.h"
#include "kernels/stream_math.h"

namespace edkm::kernels::EDKM_STREAM_ISA {

constexpr int kLanes = 16;
constexpr int kTile = 4096;    // weights put in value order together (skipping)
constexpr int kBuckets = 512;  // buckets of that counting sort
// A loop over the lanes, kept a loop: fully unrolled first, GCC scalarises the lane arrays and
// the vectoriser no longer sees them (measured: scalar adds in the gradient accumulation).
#define EDKM_LANES(l) _Pragma("GCC unroll 1") for (int l = 0; l < kLanes; ++l)
// The positions of a window: 0, then [lo, hi) (lo >= 1). In the block functions, templated on KC:
// K known at compile time (KC > 0: the full window, a loop the compiler unrolls, so that the K
// attention rows of a block stay in registers) or not (KC = 0: any window, the rows in a stack
// array).
#define EDKM_POSITIONS(j, lo, hi) \
  _Pragma("GCC unroll 16") for (int j = 0; j < (KC > 0 ? KC : (hi)); j = (KC > 0 || j != 0) ? j + 1 : (lo))

// The centroid arrays of one level in position order. Position 0 is centroid 0; positions
// 1..K-1 hold centroids 1..K-1, by value when `sorted`, else in index order.
struct LevelView {
  int k = 0;
  bool sorted = false;
  std::array<int32_t, kStreamMaxK> perm;               // position -> centroid
  std::array<float, kStreamMaxK> c, cn, is, gm;        // c^t, c^{t+1}, 1 / S^t, gamma^{t+1}
  std::array<float, kStreamMaxK> gs;                   // gamma^{t+1} / S^t (gm * is, rounded once)
  std::array<double, kStreamMaxK + 1> pre_cn, pre_gs;  // prefix sums of cn and of gm * is
  // Locator of the sorted positions 1..K-1 (cs = c + 1, m = K - 1 of them): first[q] is at or
  // before the first position whose value reaches cell q of kCells equal cells over [cs[0],
  // cs[m-1]], so a search scans forward from it (O(1) for the values LLM weights take).
  static constexpr int kCells = 1024;
  std::array<int16_t, kCells + 1> first;
  float cell_origin = 0, cell_scale = 0;

  int cell_start(float v) const {
    const float f = (v - cell_origin) * cell_scale;
    return first[f >= 0.0f ? (f < static_cast<float>(kCells) ? static_cast<int>(f) : kCells) : 0];
  }
  // std::lower_bound / std::upper_bound over cs[0, m) (sorted views only).
  int lower(float v) const {
    const float* cs = c.data() + 1;
    int q = cell_start(v);
    while (q > 0 && cs[q - 1] >= v) --q;  // never taken unless the cell arithmetic rounded
    while (q < k - 1 && cs[q] < v) ++q;
    return q;
  }
  int upper(float v) const {
    const float* cs = c.data() + 1;
    int q = cell_start(v);
    while (q > 0 && cs[q - 1] > v) --q;  // never taken unless the cell arithmetic rounded
    while (q < k - 1 && cs[q] <= v) ++q;
    return q;
  }
};

// Per-work-item scratch: attention rows of a block, per-lane fp64 partials, the value-ordered
// tile and the closed-form shares of skipped pairs.
struct Scratch {
  std::vector<double> acc;                  // width x 8: the block loop's D8 partials of the item
  std::vector<float> xs, tmp;               // kTile: the tile in value order; its values in memory order
  std::vector<int32_t> order;               // kTile: tile offset of each value-ordered weight
  std::vector<uint16_t> bucket;             // kTile
  std::vector<int32_t> hist;                // kBuckets + 1
  std::vector<double> out_x, out_n, out_g;  // K + 1: difference arrays of the skipped x, 1, g
  std::vector<LevelView> views;
  int64_t skipped = 0;  // terms left out
  // The pass's constants in the lanes' precision: -1 / tau, zero_threshold, centroid 0's prune
  // bias (0 without pruning) and the distance of a blocked lane.
  float neg_inv_tau, zt, prune, blocked_value;
  explicit Scratch(const StreamParams& p)
      : acc(static_cast<size_t>(p.width) * 8),
        xs(kTile),
        tmp(kTile),
        order(kTile),
        bucket(kTile),
        hist(kBuckets + 1),
        out_x(static_cast<size_t>(p.k) + 1),
        out_n(static_cast<size_t>(p.k) + 1),
        out_g(static_cast<size_t>(p.k) + 1),
        neg_inv_tau(static_cast<float>(-1.0 / p.tau)),
        zt(static_cast<float>(p.zero_threshold)),
        prune(p.prune_threshold > 0 ? static_cast<float>(p.prune_threshold) : 0.0f),
        blocked_value(static_cast<float>(p.blocked)) {}
};

// Fills v from the arrays of level t of group g (in position order) and their prefix sums.
inline void fill_view(const StreamParams& p, int64_t g, int t, LevelView& v) {
  const int K = static_cast<int>(p.k);
  const float* ch = static_cast<const float*>(p.c_hist) + (g * (p.max_iter + 1) + t) * int64_t(K);
  const float* is = static_cast<const float*>(p.inv_s_hist) + (g * p.max_iter + t) * int64_t(K);
  const float* gm = static_cast<const float*>(p.gamma_hist) + (g * (p.max_iter + 1) + t + 1) * int64_t(K);
  v.pre_cn[0] = v.pre_gs[0] = 0;
  for (int pos = 0; pos < K; ++pos) {
    const int j = v.perm[pos];
    v.c[pos] = ch[j];
    v.cn[pos] = ch[K + j];
    v.is[pos] = is[j];
    v.gm[pos] = gm[j];
    v.gs[pos] = gm[j] * is[j];
    v.pre_cn[pos + 1] = v.pre_cn[pos] + static_cast<double>(v.cn[pos]);
    v.pre_gs[pos + 1] = v.pre_gs[pos] + static_cast<double>(v.gm[pos]) * static_cast<double>(v.is[pos]);
  }
}

// The view of level t (t < max_iter) of group g; sorted by value when `sort` and every number
// it holds is finite (a NaN has no order; the closed-form sums need finite terms).
inline void make_view(const StreamParams& p, int64_t g, int t, bool sort, LevelView& v) {
  const int K = static_cast<int>(p.k);
  v.k = K;
  v.sorted = false;
  for (int j = 0; j < K; ++j) v.perm[j] = j;
  fill_view(p, g, t, v);
  if (!sort || !std::isfinite(v.pre_cn[K]) || !std::isfinite(v.pre_gs[K])) return;
  for (int j = 0; j < K; ++j)
    if (!std::isfinite(v.c[j])) return;
  const float* c = v.c.data();  // index order still
  std::sort(v.perm.begin() + 1, v.perm.begin() + K,
            [c](int a, int b) { return c[a] < c[b] || (c[a] == c[b] && a < b); });
  fill_view(p, g, t, v);
  v.sorted = true;
  // The locator: one position back from the binary search's answer keeps the start at or before
  // the true one whatever the rounding of the cell arithmetic.
  const float* cs = v.c.data() + 1;
  const int m = K - 1;
  const float span = cs[m - 1] - cs[0];
  v.cell_origin = cs[0];
  v.cell_scale = span > 0 ? static_cast<float>(LevelView::kCells) / span : 0.0f;
  if (!std::isfinite(v.cell_scale)) v.cell_scale = 0;
  for (int q = 0; q <= LevelView::kCells; ++q) {
    const float at = span > 0 ? cs[0] + span * (static_cast<float>(q) / LevelView::kCells) : cs[0];
    const int b = static_cast<int>(std::lower_bound(cs, cs + m, at) - cs);
    v.first[q] = static_cast<int16_t>(b > 0 ? b - 1 : 0);
  }
}

// Sum of pre's terms outside the window: positions [1, lo) and [hi, K).
inline double outside(const double* pre, int lo, int hi, int k) { return (pre[lo] - pre[1]) + (pre[k] - pre[hi]); }

// Adds v to the skipped positions [1, lo) and [hi, K) of a difference array.
inline void add_outside(double* diff, int lo, int hi, int k, double v) {
  diff[1] += v;
  diff[lo] -= v;
  diff[hi] += v;
  diff[k] -= v;
}

// The window [lo, hi) of positions 1..K-1 a block needs: outside it, every lane's term is below
// theta of the lane's largest (D_j > D_min + w, w = tau ln(1 / theta)). The block's values lie in
// [xa, xb]; u bounds every lane's D_min from above: for x in [xa, xb] the nearest of the centroids
// from the last one <= xa to the first one >= xb is at most the half gap away (segment by segment,
// the farthest x being the gap's middle clamped to [xa, xb]). So any centroid farther than
// sqrt(u + w) from [xa, xb] is skipped for every lane. Without a sorted view, or with a non-finite
// value in the block, the full window [1, K). x: all kLanes lanes (the tail repeats a live value).
inline void block_window(const LevelView& v, const float* x, float w, int& lo, int& hi) {
  lo = 1;
  hi = v.k;
  if (!v.sorted) return;
  float mn[kLanes], mx[kLanes], bad[kLanes];
  EDKM_LANES(l) {
    mn[l] = x[l];
    mx[l] = x[l];
    bad[l] = x[l] - x[l];  // NaN for a non-finite value
  }
  float xa = mn[0], xb = mx[0], nonfinite = 0;
  for (int l = 0; l < kLanes; ++l) {
    xa = mn[l] < xa ? mn[l] : xa;
    xb = mx[l] > xb ? mx[l] : xb;
    nonfinite = bad[l] != 0.0f ? 1.0f : nonfinite;
  }
  if (nonfinite != 0.0f) return;
  const float* cs = v.c.data() + 1;
  const int m = v.k - 1;
  const int ia = v.upper(xa) - 1;  // last centroid <= xa (-1: none)
  const int ib = v.lower(xb);      // first centroid >= xb (m: none)
  float u = 0;
  if (ia < 0) {
    const float e = cs[0] - xa;
    u = e * e;
  }
  if (ib >= m) {
    const float e = xb - cs[m - 1];
    u = std::max(u, e * e);
  }
  for (int q = std::max(ia, 0); q < std::min(ib, m - 1); ++q) {  // segments [cs[q], cs[q + 1]]
    const float a = cs[q], b = cs[q + 1];
    const float mid = std::min(std::max(0.5f * (a + b), std::max(a, xa)), std::min(b, xb));
    const float e = std::min(mid - a, b - mid);
    u = std::max(u, e * e);
  }
  const float r = std::sqrt(u + w) * 1.001f;  // the margin covers the rounding of D_j
  lo = 1 + v.lower(xa - r);
  hi = 1 + v.upper(xb + r);
}

// Softmax numerators of the block's values X over the window's positions (c: the view's
// centroids): prob[j] = exp(z_j - max_k z_k), z_j = -D_j / tau; returns 1 / sum_j prob[j] (the
// passes normalise as they read, one rounding as before); dmin = min_j D_j (kDmin: only the
// statistics pass needs it). Centroid 0 (prune bias, keep-sparsity: `blocked` lanes) as
// dkm_distance computes it; for j > 0 the plain square.
// floor_zt (stream_math.h) for 16 lanes: x86 max returns its second operand when either is NaN,
// so a NaN probability stays NaN.
inline F16 floor_zt16(F16 prob, F16 zt) { return max16(zt, prob); }

template <int KC, bool kDmin = false>
inline F16 block_attention(const Scratch& s, F16 X, M16 blocked, const float* c, int lo, int hi, F16* prob,
                           F16* dmin = nullptr) {
  const F16 nit = set16(s.neg_inv_tau);
  const F16 diff0 = X - set16(c[0]);
  const F16 d0 = select16(blocked, set16(s.blocked_value), diff0 * diff0 - set16(s.prune));
  F16 zmax = d0 * nit, dm = d0;
  prob[0] = zmax;
  EDKM_POSITIONS(j, lo, hi) {
    if (j == 0) continue;
    const F16 diff = X - set16(c[j]);
    const F16 dj = diff * diff;
    const F16 z = dj * nit;
    if (kDmin) dm = min16(dj, dm);  // dj < dmin ? dj : dmin
    zmax = max16(z, zmax);          // z > zmax ? z : zmax
    prob[j] = z;
  }
  if (kDmin) *dmin = dm;
  F16 sum = set16(0.0f);
  EDKM_POSITIONS(j, lo, hi) {
    prob[j] = exp16(prob[j] - zmax);
    sum = sum + prob[j];
  }
  return recip16(sum);
}

// One level of backward for the block (stream_backward_level, lane-parallel) over the window of
// view v: adds dL/dx to xbar (when given) and -coef to the partials acc[j] (position j) of the
// `live` lanes, when acc is given.
template <int KC>
inline void block_backward_level(const StreamParams& p, F16 X, F16 GY, M16 blocked, const LevelView& v, int lo, int hi,
                                 bool last, M16 live, bool full, Scratch& s, F16* xbar, D8* acc) {
  const int K = v.k;
  const float *c = v.c.data(), *cn = v.cn.data(), *gs = v.gs.data();
  F16 prob[KC > 0 ? KC : kStreamMaxK], aux[KC > 0 ? KC : kStreamMaxK];
  const F16 inv = block_attention<KC>(s, X, blocked, c, lo, hi, prob);
  // dbar_j 2 = P_j (aux_j - sum) (-2 / tau): the factor 2 of coef moved into the constant (exact).
  const F16 zt = set16(s.zt), nit2 = set16(2.0f * s.neg_inv_tau), zero = set16(0.0f);
  const F16 keep0 = select16(blocked, zero, set16(1.0f));
  F16 ssum = zero;
  // aux_j = dL/dP_j = [t = T-1] g c^T_j + gamma_j / S_j (x - c^{t+1}_j), where the clamp passes.
  auto aux_terms = [&](auto with_g) {
    EDKM_POSITIONS(j, lo, hi) {
      const F16 pj = prob[j] * inv;
      prob[j] = pj;
      const F16 cnj = set16(cn[j]);
      const F16 r = set16(gs[j]) * (X - cnj);
      const F16 aj = select16(ge16(pj, zt), decltype(with_g)::value ? fma16(GY, cnj, r) : r, zero);
      aux[j] = aj;
      ssum = fma16(aj, pj, ssum);
    }
  };
  last ? aux_terms(std::true_type{}) : aux_terms(std::false_type{});
  F16 xb = xbar ? *xbar : zero;
  EDKM_POSITIONS(j, lo, hi) {
    const F16 pj = prob[j], aj = aux[j];
    F16 dbar2 = pj * (aj - ssum) * nit2;
    if (j == 0) dbar2 = dbar2 * keep0;  // keep-sparsity: no gradient through the blocked distance
    // -coef = 2 (c_j - x) dbar_j: the partial accumulates -coef, dL/dx adds coef (exact negations).
    const F16 neg_coef = (set16(c[j]) - X) * dbar2;
    if (xbar) xb = xb + (floor_zt16(pj, zt) * set16(gs[j]) - neg_coef);
    if (acc) acc[j] = fold_add(acc[j], full ? neg_coef : select16(live, neg_coef, zero));
  }
  if (xbar && (lo > 1 || hi < K))  // skipped pairs: A_j / S_j = zero_threshold / S_j
    xb = xb + set16(static_cast<float>(static_cast<double>(s.zt) * outside(v.pre_gs.data(), lo, hi, K)));
  if (xbar) *xbar = xb;
}

// kLanes values from base (count valid; the rest repeat the last one) as floats.
inline F16 load_block(const void* data, int64_t base, int count, DType kind) {
  if (kind == DType::kF32 && count == kLanes) return load16(static_cast<const float*>(data) + base);
  if (kind == DType::kBF16 && count == kLanes) return load16_bf16(static_cast<const uint16_t*>(data) + base);
  float out[kLanes];
  for (int l = 0; l < kLanes; ++l) out[l] = load_value<float>(data, base + (l < count ? l : count - 1), kind);
  return load16(out);
}

// The same through an index list: data[base + idx[l]].
inline F16 gather_block(const void* data, int64_t base, const int32_t* idx, int count, DType kind) {
  float out[kLanes];
  for (int l = 0; l < kLanes; ++l) out[l] = load_value<float>(data, base + idx[l < count ? l : count - 1], kind);
  return load16(out);
}

// The first `count` lanes of V to data[base + idx[l]] (idx nullptr: base + l; out += V when
// accumulate).
inline void put_block(void* data, int64_t base, const int32_t* idx, int count, DType kind, F16 V, bool accumulate) {
  if (!idx && kind == DType::kF32 && count == kLanes) {  // a full block: vector loads and stores
    float* f = static_cast<float*>(data) + base;
    store16(f, accumulate ? load16(f) + V : V);
    return;
  }
  if (!idx && kind == DType::kBF16 && count == kLanes) {
    uint16_t* h = static_cast<uint16_t*>(data) + base;
    store16_bf16(h, accumulate ? load16_bf16(h) + V : V);
    return;
  }
  float v[kLanes];
  store16(v, V);
  for (int l = 0; l < count; ++l) {
    const int64_t at = base + (idx ? idx[l] : l);
    store_value<float>(data, at, accumulate ? load_value<float>(data, at, kind) + v[l] : v[l], kind);
  }
}

// Puts the n weights from base in value order: s.xs (values), s.order (offsets from base).
// Counting sort into kBuckets equal-width buckets between the tile's min and max: order within a
// bucket is memory order, which is all the windows need. Non-finite values land in an end bucket
// (their blocks take the full window).
inline void sort_tile(const StreamParams& p, int64_t base, int n, Scratch& s) {
  float* v = s.tmp.data();
  if (p.kind == DType::kF32) {
    std::copy_n(static_cast<const float*>(p.x) + base, n, v);
  } else {
    for (int i = 0; i < n; ++i) v[i] = load_value<float>(p.x, base + i, p.kind);
  }
  float mn = std::numeric_limits<float>::infinity(), mx = -mn;
  for (int i = 0; i < n; ++i) {
    mn = v[i] < mn ? v[i] : mn;
    mx = v[i] > mx ? v[i] : mx;
  }
  const float scale = mx > mn ? static_cast<float>(kBuckets) / (mx - mn) : 0.0f;
  std::fill(s.hist.begin(), s.hist.end(), 0);
  for (int i = 0; i < n; ++i) {
    const float f = (v[i] - mn) * scale;
    const int b = f >= 0.0f ? (f < static_cast<float>(kBuckets) ? static_cast<int>(f) : kBuckets - 1) : 0;
    s.bucket[i] = static_cast<uint16_t>(b);
    ++s.hist[b + 1];
  }
  for (int b = 0; b < kBuckets; ++b) s.hist[b + 1] += s.hist[b];
  for (int i = 0; i < n; ++i) {
    const int at = s.hist[s.bucket[i]]++;
    s.xs[at] = v[i];
    s.order[at] = i;
  }
}

// Vectors of group g: count <= kLanes of them, base + idx[l] (idx nullptr: base + l); their
// values xs (nullptr: loaded from p.x). The tail lanes repeat the last value and are neither
// accumulated nor stored. w: the window margin (skipping; 0 = none). acc: the item's partials
// (width of them, in position order).
template <int KC>
inline void block_pass(const StreamParams& p, int64_t g, int64_t base, const int32_t* idx, const float* xs, int count,
                       float w, Scratch& s, D8* acc) {
  const int K = static_cast<int>(p.k);
  const int T = p.iters[g];
  const bool needs_grad =
      p.pass == StreamPass::kGammaLast || p.pass == StreamPass::kReduce || p.pass == StreamPass::kGradInput;
  const bool full = count == kLanes;
  float xl[kLanes];  // the values lane by lane (windows)
  F16 X;
  if (xs && full) {
    X = load16(xs);
  } else if (xs) {
    for (int l = 0; l < kLanes; ++l) xl[l] = xs[l < count ? l : count - 1];
    X = load16(xl);
  } else {
    X = load_block(p.x, base, count, p.kind);
  }
  const F16 zero = set16(0.0f), zt = set16(s.zt);
  F16 GY = zero;
  if (needs_grad) GY = idx ? gather_block(p.grad, base, idx, count, p.kind) : load_block(p.grad, base, count, p.kind);
  const M16 blocked = p.block_zero ? ne16(X, zero) : lt16(zero, zero);
  // Lanes past `count` (they repeat the last value) contribute nothing to the partials.
  const M16 live = first16(count);
  F16 prob[KC > 0 ? KC : kStreamMaxK];
  const LevelView& v = s.views[0];
  int lo = 1, hi = K;
  if (w > 0) store16(xl, X);
  if (w > 0 && p.pass != StreamPass::kGradInput) block_window(v, xl, w, lo, hi);
  const bool skipped = lo > 1 || hi < K;
  s.skipped += static_cast<int64_t>(K - 1 - (hi - lo)) * count;

  switch (p.pass) {
    case StreamPass::kStats: {
      F16 dmin;
      const F16 inv = block_attention<KC, true>(s, X, blocked, v.c.data(), lo, hi, prob, &dmin);
      const D16 XD = widen16(X);
      EDKM_POSITIONS(j, lo, hi) {
        F16 a = floor_zt16(prob[j] * inv, zt);
        if (!full) a = select16(live, a, zero);
        acc[j] = fold_mul_add(acc[j], a, XD);
        acc[K + j] = fold_add(acc[K + j], a);
      }
      acc[2 * K] = fold_add(acc[2 * K], full ? dmin : select16(live, dmin, zero));
      if (skipped) {
        double sx = 0;
        store16(xl, X);
        for (int l = 0; l < count; ++l) sx += static_cast<double>(xl[l]);
        add_outside(s.out_x.data(), lo, hi, K, sx);
        add_outside(s.out_n.data(), lo, hi, K, static_cast<double>(count));
      }
      break;
    }
    case StreamPass::kOutput: {
      const F16 inv = block_attention<KC>(s, X, blocked, v.c.data(), lo, hi, prob);
      F16 y = zero;
      EDKM_POSITIONS(j, lo, hi) y = fma16(floor_zt16(prob[j] * inv, zt), set16(v.cn[j]), y);
      if (skipped) y = y + set16(static_cast<float>(static_cast<double>(s.zt) * outside(v.pre_cn.data(), lo, hi, K)));
      put_block(p.out, base, idx, count, p.kind, y, false);
      break;
    }
    case StreamPass::kGammaLast: {
      const F16 inv = block_attention<KC>(s, X, blocked, v.c.data(), lo, hi, prob);
      const D16 G = widen16(full ? GY : select16(live, GY, zero));
      EDKM_POSITIONS(j, lo, hi) acc[j] = fold_mul_add(acc[j], floor_zt16(prob[j] * inv, zt), G);
      if (skipped) {
        double sg = 0;
        float gl[kLanes];
        store16(gl, GY);
        for (int l = 0; l < count; ++l) sg += static_cast<double>(gl[l]);
        add_outside(s.out_g.data(), lo, hi, K, sg);
      }
      break;
    }
    case StreamPass::kReduce: {
      F16 xbar = zero;  // fused gradient (out set): level t's share of dL/dx from the same row
      block_backward_level<KC>(p, X, GY, blocked, v, lo, hi, p.level == T - 1, live, full, s, p.out ? &xbar : nullptr,
                               acc);
      if (p.out) put_block(p.out, base, idx, count, p.kind, xbar, true);
      break;
    }
    case StreamPass::kGradInput: {
      F16 xbar = zero;
      const int levels = std::min(T, p.grad_levels);
      for (int t = 0; t < levels; ++t) {
        const LevelView& vt = s.views[static_cast<size_t>(t)];
        if (w > 0) {
          block_window(vt, xl, w, lo, hi);
          s.skipped += static_cast<int64_t>(K - 1 - (hi - lo)) * count;
        }
        block_backward_level<KC>(p, X, GY, blocked, vt, lo, hi, t == T - 1, live, full, s, &xbar, nullptr);
      }
      put_block(p.out, base, idx, count, p.kind, xbar, p.accumulate);
      break;
    }
  }
}

// The level each view of the pass holds: views[0] (and views[t] for kGradInput).
inline int pass_levels(const StreamParams& p, int T) {
  return p.pass == StreamPass::kGradInput ? std::min(T, p.grad_levels) : 1;
}
inline int pass_level(const StreamParams& p, int T) {
  return p.pass == StreamPass::kStats || p.pass == StreamPass::kReduce ? p.level : T - 1;
}

// Whether windows of margin w pay for the value-order sort and the windows themselves. Cost
// model in units of one centroid's lane work per weight: a block evaluates 1 + (mean window)
// centroids plus kSkipOverhead for sorting and windowing, against K without skipping; the mean
// window is that of a block sitting on centroid q (radius sqrt(w + (larger neighbouring gap / 2)^2)).
// Fitted on 1024x4096 fp32, 2 threads, AVX-512 (benchmarks/results/streaming_cpu_simd.md): the
// overhead is ~13-19 centroids' worth; 10% margin for the model's error.
constexpr double kSkipOverhead = 20;
inline bool worth_skipping(const LevelView& v, float w) {
  const float* cs = v.c.data() + 1;
  const int m = v.k - 1;
  if (m < 2) return false;
  double total = 0;
  for (int q = 0; q < m; ++q) {
    const float gap = std::max(q > 0 ? cs[q] - cs[q - 1] : 0.0f, q + 1 < m ? cs[q + 1] - cs[q] : 0.0f);
    const float r = std::sqrt(w + 0.25f * gap * gap);
    total += v.upper(cs[q] + r) - v.lower(cs[q] - r);
  }
  return 1.0 + total / m + kSkipOverhead <= 0.9 * v.k;
}

// The blocks of vectors [begin, end) of group g, tile by tile (in value order when w > 0), their
// partials held here (KC > 0: 2 KC + 1 of them, which the compiler keeps in registers where they
// fit) and stored to s.acc at the end.
template <int KC>
inline void run_blocks(const StreamParams& p, int64_t g, int64_t begin, int64_t end, float w, Scratch& s) {
  constexpr int kMaxWidth = 2 * (KC > 0 ? KC : static_cast<int>(kStreamMaxK)) + 1;
  const int width = static_cast<int>(p.width);
  D8 acc[kMaxWidth];
  for (int i = 0; i < (KC > 0 ? kMaxWidth : width); ++i) acc[i] = zero8();
  const int64_t row = g * p.n;
  for (int64_t t0 = begin; t0 < end; t0 += kTile) {
    const int n = static_cast<int>(std::min<int64_t>(kTile, end - t0));
    if (KC == 0 && w > 0) {
      sort_tile(p, row + t0, n, s);
      for (int i = 0; i < n; i += kLanes)
        block_pass<KC>(p, g, row + t0, s.order.data() + i, s.xs.data() + i, std::min(kLanes, n - i), w, s, acc);
    } else {
      for (int i = 0; i < n; i += kLanes)
        block_pass<KC>(p, g, row + t0 + i, nullptr, nullptr, std::min(kLanes, n - i), 0, s, acc);
    }
  }
  for (int i = 0; i < width; ++i) store8(s.acc.data() + static_cast<size_t>(i) * 8, acc[i]);
}

// A work item (group g, vectors [begin, end)): blocks of kLanes, in value order per tile when
// skipping; partials summed lane by lane into out (width doubles, centroid order) when the pass
// reduces, with the closed-form shares of the skipped pairs.
inline void run_item(const StreamParams& p, int64_t g, int64_t begin, int64_t end, StreamSkip mode, Scratch& s,
                     double* out) {
  const bool skip = mode != StreamSkip::kOff;
  const int K = static_cast<int>(p.k);
  const int T = p.iters[g];
  const int levels = pass_levels(p, T);
  if (s.views.size() < static_cast<size_t>(levels)) s.views.resize(static_cast<size_t>(levels));
  bool sorted = skip;
  for (int t = 0; t < levels; ++t) {
    make_view(p, g, p.pass == StreamPass::kGradInput ? t : pass_level(p, T), skip, s.views[t]);
    sorted = sorted && s.views[t].sorted;
  }
  const double theta_zt = p.zero_threshold;
  const double theta = theta_zt > 0 && theta_zt < 0x1p-48 ? theta_zt : 0x1p-48;
  const float w = sorted ? static_cast<float>(p.tau * -std::log(theta)) : 0.0f;
  // Skipping pays for its sort and windows only when the windows leave out most centroids.
  sorted = sorted && (mode == StreamSkip::kAlways || (p.k >= kStreamSkipMinK && worth_skipping(s.views[0], w)));
  if (!sorted && skip) {  // no skipping for this item: identity positions
    for (int t = 0; t < levels; ++t)
      make_view(p, g, p.pass == StreamPass::kGradInput ? t : pass_level(p, T), false, s.views[t]);
  }
  if (sorted) {
    std::fill(s.out_x.begin(), s.out_x.end(), 0.0);
    std::fill(s.out_n.begin(), s.out_n.end(), 0.0);
    std::fill(s.out_g.begin(), s.out_g.end(), 0.0);
  }
  if (sorted) {
    run_blocks<0>(p, g, begin, end, w, s);
  } else {  // K of 1 to 4 bits at compile time (the rows and partials in registers); other K through the stack
    K == 2    ? run_blocks<2>(p, g, begin, end, 0, s)
    : K == 4  ? run_blocks<4>(p, g, begin, end, 0, s)
    : K == 8  ? run_blocks<8>(p, g, begin, end, 0, s)
    : K == 16 ? run_blocks<16>(p, g, begin, end, 0, s)
              : run_blocks<0>(p, g, begin, end, 0, s);
  }
  if (!out) return;
  const LevelView& v = s.views[0];
  const double zt = static_cast<float>(p.zero_threshold);  // as the lanes clamp
  double ex = 0, en = 0, eg = 0;                           // running sums of the difference arrays: the skipped shares
  for (int pos = 0; pos < K; ++pos) {
    if (sorted) {
      ex += s.out_x[pos];
      en += s.out_n[pos];
      eg += s.out_g[pos];
    }
    const int j = v.perm[pos];
    double a = 0, b = 0;
    for (int l = 0; l < 8; ++l) a += s.acc[static_cast<size_t>(pos) * 8 + l];
    switch (p.pass) {
      case StreamPass::kStats:
        for (int l = 0; l < 8; ++l) b += s.acc[static_cast<size_t>(K + pos) * 8 + l];
        out[j] = a + zt * ex;
        out[K + j] = b + zt * en;
        break;
      case StreamPass::kGammaLast:
        out[j] = a + zt * eg;
        break;
      default:
        out[j] = a;
    }
  }
  if (p.pass == StreamPass::kStats) {
    double in = 0;
    for (int l = 0; l < 8; ++l) in += s.acc[static_cast<size_t>(2 * K) * 8 + l];
    out[2 * K] = in;
  }
}

}  // namespace edkm::kernels::EDKM_STREAM_ISA

namespace edkm::kernels::EDKM_STREAM_ISA {
// The items of pass p (cluster_dim 1, fp32 compute) this thread takes from the queue, one scratch
// per call; skip: exact work skipping (see the top of this file).
inline void stream_items_block(const StreamParams& p, StreamQueue& items, StreamSkip skip) {
  const FlushDenormalResults ftz;
  Scratch s(p);
  const bool reduces = stream_pass_reduces(p.pass);
  for (int64_t item; items.take(item);) {
    const int64_t g = item / p.chunks, c = item % p.chunks;
    if (!stream_group_active(p, g)) continue;
    run_item(p, g, c * p.chunk, std::min(p.n, (c + 1) * p.chunk), skip, s,
             reduces ? p.partials + item * p.width : nullptr);
  }
  if (s.skipped) add_stream_skipped_terms(s.skipped);
}
}  // namespace edkm::kernels::EDKM_STREAM_ISA
