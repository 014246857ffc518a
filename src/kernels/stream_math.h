#pragma once
// Shared math of the streaming (fused, recompute) engine kernels: one definition for the CPU and
// CUDA backends. No ATen: raw pointers and a params struct.
//
// Per group g (one LUT) and iteration t, with vectors x_i (d values), centroids c^t (K x d):
//   D_ij = |x_i - c_j|^2 (- prune_threshold for j = 0; blocked for j = 0 when keep-sparsity applies)
//   P_ij = softmax_j(-D_ij / tau),  A_ij = max(P_ij, zero_threshold)
//   S_j = sum_i A_ij,  M_j = sum_i A_ij x_i,  c^{t+1}_j = M_j / S_j (x zero mask)
//   y_i = sum_j A^{T-1}_ij c^T_j
// (the kernels multiply by -1/tau and by the saved 1/S_j rather than divide)
// Backward, with g_i = dL/dy_i and gamma^{t+1} = dL/dc^{t+1} (K x d, zero-masked):
//   Abar_ij = [t = T-1] g_i . c^T_j + gamma^{t+1}_j . (x_i - c^{t+1}_j) / S_j
//   Pbar_ij = Abar_ij [P_ij >= zero_threshold],  zbar_ij = P_ij (Pbar_ij - sum_k Pbar_ik P_ik)
//   Dbar_ij = -zbar_ij / tau (0 where blocked)
//   dL/dx_i  += sum_j Dbar_ij 2 (x_i - c^t_j) + sum_j gamma^{t+1}_j A_ij / S_j
//   gamma^t_j = -sum_i Dbar_ij 2 (x_i - c^t_j)      (a K x d reduction)
// Nothing N x K is stored: every pass recomputes the attention row of a vector from x_i and c^t.
#include <cstdint>

#include "edkm/export.h"
#include "kernels/distance_math.h"
#include "kernels/dtype_math.h"
#include "kernels/host_device.h"

EDKM_INTERNAL_BEGIN
namespace edkm::kernels {

/// The passes over the weights.
enum class StreamPass : int32_t {
  kStats = 0,      ///< level t: partials M (K x d), S (K), inertia (1) of groups with T_g > t
  kOutput = 1,     ///< out = y (G x n x d) from c^{T_g - 1}, c^{T_g}
  kGammaLast = 2,  ///< partials sum_i A^{T_g - 1}_ij g_i (K x d)
  kReduce = 3,     ///< level t: partials -sum_i Dbar_ij 2 (x_i - c^t_j) (K x d) of groups with T_g > t;
                   ///< with out set (fused gradient), also out += level t's share of dL/dx
  kGradInput = 4,  ///< out = dL/dx (G x n x d) of levels t < min(T_g, grad_levels); accumulate: out +=
};

constexpr int kStreamMaxK = 256;   // bits <= 8
constexpr int kStreamMaxDim = 16;  // cluster_dim

/// Parameters of one pass. The *_hist arrays are of the compute type (float, or double for kF64).
struct StreamParams {
  const void* x = nullptr;     // G x n x d of `kind`
  const void* grad = nullptr;  // G x n x d of `kind` (kGammaLast, kReduce, kGradInput)
  void* out = nullptr;         // G x n x d of `kind` (kOutput, kGradInput)
  DType kind = DType::kF32;
  int64_t groups = 1, n = 0, d = 1, k = 2;
  int64_t chunk = 1, chunks = 1;  // vectors per work item; work items per group
  int64_t width = 0;              // partials per work item: K * d + K + 1
  double tau = 1e-4, zero_threshold = 1e-7, prune_threshold = 0, blocked = 0;
  bool block_zero = false;  // keep-sparsity: non-zero vectors may not pick centroid 0
  StreamPass pass = StreamPass::kStats;
  int32_t level = 0;                 // t of kStats / kReduce
  int32_t max_iter = 1;              // history stride
  int32_t grad_levels = 1 << 30;     // kGradInput: levels t < min(T_g, grad_levels)
  bool accumulate = false;           // kGradInput: out += (out holds the fused kReduce shares)
  const int32_t* iters = nullptr;    // G: T_g, iterations of every group
  const void* c_hist = nullptr;      // G x (max_iter + 1) x K x d
  const void* inv_s_hist = nullptr;  // G x max_iter x K: 1 / S_j
  const void* gamma_hist = nullptr;  // G x (max_iter + 1) x K x d
  double* partials = nullptr;        // (G * chunks) x width, written by the reducing passes
};

/// Vectors per work item: enough items for `parallelism`, and items large enough that the
/// partials (width doubles each) stay a few percent of the data they summarise.
inline int64_t stream_chunk(int64_t n, int64_t groups, int64_t width, int64_t parallelism) {
  const int64_t total = n * groups;
  int64_t chunk = (total + parallelism - 1) / parallelism;
  if (chunk < 64 * width) chunk = 64 * width;
  if (chunk > n) chunk = n;
  return chunk < 1 ? 1 : chunk;
}

// exp in the precision of its argument: CUDA's expf / exp on the device, the builtins on the host.
#if defined(__CUDA_ARCH__)
EDKM_HOST_DEVICE float stream_exp(float v) { return expf(v); }
EDKM_HOST_DEVICE double stream_exp(double v) { return exp(v); }
#else
EDKM_HOST_DEVICE float stream_exp(float v) { return __builtin_expf(v); }
EDKM_HOST_DEVICE double stream_exp(double v) { return __builtin_exp(v); }
#endif

/// D_j of vector x to centroid j of c (K x d). DIM > 0 fixes d at compile time.
template <class S, int DIM>
EDKM_HOST_DEVICE S stream_distance(const StreamParams& p, const S* x, const S* c, int j, bool blocked_row) {
  const int d = DIM > 0 ? DIM : static_cast<int>(p.d);
  if (blocked_row && j == 0) return static_cast<S>(p.blocked);
  S s = 0;
  for (int k = 0; k < d; ++k) {
    const S diff = x[k] - c[j * d + k];
    s += diff * diff;
  }
  return dkm_distance<S>(s, j, p.prune_threshold, blocked_row, p.blocked);
}

/// max(P, zero_threshold) that keeps a NaN P a NaN: an overflowed softmax (centroids ~1e18 away)
/// must surface as NaN, as in the dense engine, not become a plausible zero_threshold.
template <class S>
EDKM_HOST_DEVICE S floor_zt(S prob, S zt) {
  return prob < zt ? zt : prob;
}

/// prob[j] = softmax_j(-D_j / tau) (before the zero_threshold floor); returns min_j D_j.
template <class S, int DIM>
EDKM_HOST_DEVICE S stream_attention(const StreamParams& p, const S* x, const S* c, bool blocked_row, S* prob) {
  const S neg_inv_tau = static_cast<S>(-1.0 / p.tau);
  const int K = static_cast<int>(p.k);
  S zmax = 0, dmin = 0;
  for (int j = 0; j < K; ++j) {
    const S dj = stream_distance<S, DIM>(p, x, c, j, blocked_row);
    const S z = dj * neg_inv_tau;
    if (j == 0 || dj < dmin) dmin = dj;
    if (j == 0 || z > zmax) zmax = z;
    prob[j] = z;
  }
  S sum = 0;
  for (int j = 0; j < K; ++j) {
    prob[j] = stream_exp(prob[j] - zmax);
    sum += prob[j];
  }
  const S inv = S(1) / sum;
  for (int j = 0; j < K; ++j) prob[j] *= inv;
  return dmin;
}

/// One vector's backward at one level: adds dL/dx to `xbar` (when given) and the gamma^t
/// contributions to `sink` slots j * d + k (when kReduceC). inv_s: 1 / S_j. aux: K scratch.
template <class S, int DIM, bool kReduceC, class Sink>
EDKM_HOST_DEVICE void stream_backward_level(const StreamParams& p, const S* x, const S* gy, bool blocked_row,
                                            const S* c, const S* cn, const S* inv_s, const S* gamma, bool last, S* prob,
                                            S* aux, S* xbar, Sink& sink) {
  const int d = DIM > 0 ? DIM : static_cast<int>(p.d), K = static_cast<int>(p.k);
  stream_attention<S, DIM>(p, x, c, blocked_row, prob);
  const S zt = static_cast<S>(p.zero_threshold), neg_inv_tau = static_cast<S>(-1.0 / p.tau);
  S s = 0;
  for (int j = 0; j < K; ++j) {  // aux_j = dL/dP_j: the clamp passes where P_j >= zero_threshold
    S a = 0, r = 0;
    for (int k = 0; k < d; ++k) {
      if (last) a += gy[k] * cn[j * d + k];
      r += gamma[j * d + k] * (x[k] - cn[j * d + k]);
    }
    aux[j] = prob[j] >= zt ? a + r * inv_s[j] : S(0);
    s += aux[j] * prob[j];
  }
  for (int j = 0; j < K; ++j) {
    const S dbar = (blocked_row && j == 0) ? S(0) : prob[j] * (aux[j] - s) * neg_inv_tau;
    const S a_over_s = floor_zt(prob[j], zt) * inv_s[j];
    for (int k = 0; k < d; ++k) {
      const S coef = 2 * (x[k] - c[j * d + k]) * dbar;
      if (xbar) xbar[k] += coef + gamma[j * d + k] * a_over_s;
      if (kReduceC) sink.add(j * d + k, -static_cast<double>(coef));
    }
  }
}

/// out[base .. base + d) = v (+= v when accumulate), unless !live.
template <class S>
EDKM_HOST_DEVICE void stream_store(const StreamParams& p, int64_t base, int d, const S* v, bool accumulate, bool live) {
  for (int k = 0; live && k < d; ++k)
    store_value<S>(p.out, base + k, accumulate ? load_value<S>(p.out, base + k, p.kind) + v[k] : v[k], p.kind);
}

/// The work of pass p.pass on vector i of group g. `Sink::add(slot, double)` accumulates partials.
/// KMAX bounds p.k (scratch size); DIM > 0 fixes cluster_dim at compile time. live = false runs
/// the same instructions without storing (a GPU lane past the end that must still take part in
/// warp-wide sums; its sink adds zeros).
template <class S, int KMAX, int DIM, class Sink>
EDKM_HOST_DEVICE void stream_vector(const StreamParams& p, int64_t g, int64_t i, Sink& sink, bool live = true) {
  const int d = DIM > 0 ? DIM : static_cast<int>(p.d), K = static_cast<int>(p.k);
  const int T = p.iters[g];
  const int64_t base = (g * p.n + i) * d;
  S x[kStreamMaxDim], gy[kStreamMaxDim], prob[KMAX], aux[KMAX];
  bool nonzero = false;
  for (int k = 0; k < d; ++k) {
    x[k] = load_value<S>(p.x, base + k, p.kind);
    nonzero = nonzero || x[k] != S(0);
  }
  const bool blocked_row = p.block_zero && nonzero;
  const int64_t ckd = int64_t(K) * d;
  const S* ch = static_cast<const S*>(p.c_hist) + g * (p.max_iter + 1) * ckd;
  const S* ish = static_cast<const S*>(p.inv_s_hist) + g * p.max_iter * int64_t(K);
  const S* gh = static_cast<const S*>(p.gamma_hist) + g * (p.max_iter + 1) * ckd;
  const S zt = static_cast<S>(p.zero_threshold);
  const bool needs_grad =
      p.pass == StreamPass::kGammaLast || p.pass == StreamPass::kReduce || p.pass == StreamPass::kGradInput;
  for (int k = 0; k < d; ++k) gy[k] = needs_grad ? load_value<S>(p.grad, base + k, p.kind) : S(0);

  switch (p.pass) {
    case StreamPass::kStats: {
      const S dmin = stream_attention<S, DIM>(p, x, ch + p.level * ckd, blocked_row, prob);
      for (int j = 0; j < K; ++j) {
        const double a = static_cast<double>(floor_zt(prob[j], zt));
        for (int k = 0; k < d; ++k) sink.add(j * d + k, a * static_cast<double>(x[k]));
        sink.add(ckd + j, a);
      }
      sink.add(ckd + K, static_cast<double>(dmin));
      break;
    }
    case StreamPass::kOutput: {
      const S* c = ch + (T - 1) * ckd;
      stream_attention<S, DIM>(p, x, c, blocked_row, prob);
      S y[kStreamMaxDim];
      for (int k = 0; k < d; ++k) {
        y[k] = 0;
        for (int j = 0; j < K; ++j) y[k] += floor_zt(prob[j], zt) * c[ckd + j * d + k];
      }
      stream_store<S>(p, base, d, y, false, live);
      break;
    }
    case StreamPass::kGammaLast: {
      stream_attention<S, DIM>(p, x, ch + (T - 1) * ckd, blocked_row, prob);
      for (int j = 0; j < K; ++j) {
        const double a = static_cast<double>(floor_zt(prob[j], zt));
        for (int k = 0; k < d; ++k) sink.add(j * d + k, a * static_cast<double>(gy[k]));
      }
      break;
    }
    case StreamPass::kReduce: {
      // Fused gradient (out set): the same attention row gives level t's share of dL/dx.
      const int t = p.level;
      S xbar[kStreamMaxDim];
      for (int k = 0; k < d; ++k) xbar[k] = 0;
      stream_backward_level<S, DIM, true>(p, x, gy, blocked_row, ch + t * ckd, ch + (t + 1) * ckd, ish + t * K,
                                          gh + (t + 1) * ckd, t == T - 1, prob, aux, p.out ? xbar : nullptr, sink);
      if (p.out) stream_store<S>(p, base, d, xbar, true, live);
      break;
    }
    case StreamPass::kGradInput: {
      S xbar[kStreamMaxDim];
      for (int k = 0; k < d; ++k) xbar[k] = 0;
      const int levels = T < p.grad_levels ? T : p.grad_levels;
      for (int t = 0; t < levels; ++t)
        stream_backward_level<S, DIM, false>(p, x, gy, blocked_row, ch + t * ckd, ch + (t + 1) * ckd, ish + t * K,
                                             gh + (t + 1) * ckd, t == T - 1, prob, aux, xbar, sink);
      stream_store<S>(p, base, d, xbar, p.accumulate, live);
      break;
    }
  }
}

/// Whether group g takes part in the pass.
EDKM_HOST_DEVICE bool stream_group_active(const StreamParams& p, int64_t g) {
  if (p.pass == StreamPass::kStats || p.pass == StreamPass::kReduce) return p.iters[g] > p.level;
  return p.iters[g] > 0;
}

/// Whether the pass writes partials.
EDKM_HOST_DEVICE bool stream_pass_reduces(StreamPass pass) {
  return pass == StreamPass::kStats || pass == StreamPass::kGammaLast || pass == StreamPass::kReduce;
}

// Runs one pass; partials (when the pass reduces) must be zeroed by the caller.
void stream_pass_cpu(const StreamParams& p);
#if defined(EDKM_WITH_CUDA)
// CUDA twin on `stream` (a cudaStream_t); returns a cudaError_t as int.
int stream_pass_cuda(const StreamParams& p, void* stream);
#endif

}  // namespace edkm::kernels
EDKM_INTERNAL_END
