#pragma once
// The streaming passes for cluster_dim 1 in fp32, over blocks of kLanes weights at a time: the
// same math as stream_vector (kernels/stream_math.h, the reference and the CUDA twin's source),
// in the same order per weight, laid out lane-parallel so the compiler vectorises every loop
// (this header is compiled once per instruction set: stream_kernel_avx2.cpp, _avx512.cpp) and
// the exponentials go through SLEEF's vector exp (1.0 ulp). Per-lane fp64 accumulators, summed
// once per work item: no false sharing, no serial dependency through one fp64 slot. (Summing
// blocks in fp32 first, even only the statistics' positive sums over 64 weights per lane, was
// measured: the DKM gradient amplifies that rounding beyond the fp32 dense engine's own error.)
//
// Include after defining EDKM_STREAM_EXP_BLOCK(float* v) (exp of kLanes floats in place) and
// EDKM_STREAM_ISA (the namespace of this instantiation).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cpu/stream_isa.h"
#include "kernels/stream_math.h"

namespace edkm::kernels::EDKM_STREAM_ISA {

constexpr int kLanes = 16;
// A loop over the lanes, kept a loop: fully unrolled first, GCC scalarises the lane arrays and
// the vectoriser no longer sees them (measured: scalar adds in the gradient accumulation).
#define EDKM_LANES(l) _Pragma("GCC unroll 1") for (int l = 0; l < kLanes; ++l)

// Per-work-item scratch: attention rows of a block and per-lane fp64 partials.
struct Scratch {
  std::vector<float> prob, aux;  // K x kLanes
  std::vector<double> acc;       // width x kLanes
  explicit Scratch(const StreamParams& p)
      : prob(static_cast<size_t>(p.k) * kLanes),
        aux(static_cast<size_t>(p.k) * kLanes),
        acc(static_cast<size_t>(p.width) * kLanes) {}
};

// prob[j][l] = softmax_j(-D_jl / tau) of the block's values x (c: K centroids); dmin[l] = min_j D_jl.
// Centroid 0 (prune bias, keep-sparsity) goes through dkm_distance lane by lane; for j > 0 the
// distance is the plain square, as dkm_distance returns it. Branch-free loops: vectorised.
inline void block_attention(const StreamParams& p, const float* x, const bool* blocked, const float* c, float* prob,
                            float* dmin) {
  const int K = static_cast<int>(p.k);
  const float neg_inv_tau = static_cast<float>(-1.0 / p.tau);
  float zmax[kLanes], sum[kLanes];
  EDKM_LANES(l) {
    const float diff = x[l] - c[0];
    const float d0 = dkm_distance<float>(diff * diff, 0, p.prune_threshold, blocked[l], p.blocked);
    dmin[l] = d0;
    zmax[l] = d0 * neg_inv_tau;
    prob[l] = zmax[l];
  }
  for (int j = 1; j < K; ++j) {
    float* pj = prob + j * kLanes;
    const float cj = c[j];
    EDKM_LANES(l) {
      const float diff = x[l] - cj;
      const float dj = diff * diff;
      const float z = dj * neg_inv_tau;
      dmin[l] = dj < dmin[l] ? dj : dmin[l];
      zmax[l] = z > zmax[l] ? z : zmax[l];
      pj[l] = z;
    }
  }
  EDKM_LANES(l) sum[l] = 0;
  for (int j = 0; j < K; ++j) {
    float* pj = prob + j * kLanes;
    EDKM_LANES(l) pj[l] -= zmax[l];
    EDKM_STREAM_EXP_BLOCK(pj);
    EDKM_LANES(l) sum[l] += pj[l];
  }
  EDKM_LANES(l) sum[l] = 1.0f / sum[l];
  for (int j = 0; j < K; ++j) {
    float* pj = prob + j * kLanes;
    EDKM_LANES(l) pj[l] *= sum[l];
  }
}

// One level of backward for the block (stream_backward_level, lane-parallel): adds dL/dx to xbar
// (when given) and -coef to the per-lane partials acc[j][l], weighted by `live` (1 or 0), when
// reduce.
inline void block_backward_level(const StreamParams& p, const float* x, const float* gy, const bool* blocked,
                                 const float* c, const float* cn, const float* inv_s, const float* gamma, bool last,
                                 const double* live, Scratch& s, float* xbar, bool reduce) {
  const int K = static_cast<int>(p.k);
  float dmin[kLanes], ssum[kLanes], gl[kLanes], keep0[kLanes];
  float* prob = s.prob.data();
  float* aux = s.aux.data();
  block_attention(p, x, blocked, c, prob, dmin);
  const float zt = static_cast<float>(p.zero_threshold), neg_inv_tau = static_cast<float>(-1.0 / p.tau);
  EDKM_LANES(l) {
    ssum[l] = 0;
    gl[l] = last ? gy[l] : 0.0f;  // a = [t = T-1] g . c^T_j
    keep0[l] = blocked[l] ? 0.0f : 1.0f;
  }
  for (int j = 0; j < K; ++j) {
    const float* pj = prob + j * kLanes;
    float* aj = aux + j * kLanes;
    const float cnj = cn[j], gj = gamma[j], isj = inv_s[j];
    EDKM_LANES(l) {
      const float a = 0.0f + gl[l] * cnj;
      const float r = gj * (x[l] - cnj);
      aj[l] = pj[l] >= zt ? a + r * isj : 0.0f;
      ssum[l] += aj[l] * pj[l];
    }
  }
  for (int j = 0; j < K; ++j) {
    const float* pj = prob + j * kLanes;
    const float* aj = aux + j * kLanes;
    double* accj = s.acc.data() + static_cast<size_t>(j) * kLanes;
    const float cj = c[j], gj = gamma[j], isj = inv_s[j];
    float coef[kLanes];
    EDKM_LANES(l) {
      float dbar = pj[l] * (aj[l] - ssum[l]) * neg_inv_tau;
      if (j == 0) dbar *= keep0[l];  // keep-sparsity: no gradient through the blocked distance
      coef[l] = 2 * (x[l] - cj) * dbar;
    }
    if (xbar) {
      EDKM_LANES(l) {
        const float a_over_s = (pj[l] > zt ? pj[l] : zt) * isj;
        xbar[l] += coef[l] + gj * a_over_s;
      }
    }
    if (reduce) {
      EDKM_LANES(l) accj[l] -= static_cast<double>(coef[l]) * live[l];
    }
  }
}

// kLanes values from base (count valid; the rest repeat the last one) as floats.
inline void load_block(const void* data, int64_t base, int count, ValueKind kind, float* out) {
  switch (kind) {
    case ValueKind::kF32: {
      const float* f = static_cast<const float*>(data) + base;
      if (count == kLanes) {  // a full block: one vector load
        EDKM_LANES(l) out[l] = f[l];
      } else {
        EDKM_LANES(l) out[l] = f[l < count ? l : count - 1];
      }
      break;
    }
    default:
      EDKM_LANES(l) out[l] = load_value<float>(data, base + (l < count ? l : count - 1), kind);
  }
}

// The first `count` lanes of v to data[base ..] (out += v when accumulate).
inline void store_block(void* data, int64_t base, int count, ValueKind kind, const float* v, bool accumulate) {
  if (kind == ValueKind::kF32 && count == kLanes) {  // a full block: vector loads and stores
    float* f = static_cast<float*>(data) + base;
    if (accumulate) {
      EDKM_LANES(l) f[l] += v[l];
    } else {
      EDKM_LANES(l) f[l] = v[l];
    }
    return;
  }
  for (int l = 0; l < count; ++l)
    store_value<float>(data, base + l, accumulate ? load_value<float>(data, base + l, kind) + v[l] : v[l], kind);
}

// Vectors [i0, i0 + count) of group g, count <= kLanes; the tail lanes repeat the last value
// and are neither accumulated nor stored.
inline void block_pass(const StreamParams& p, int64_t g, int64_t i0, int count, Scratch& s) {
  const int K = static_cast<int>(p.k);
  const int T = p.iters[g];
  const int64_t base = g * p.n + i0;
  const float zt = static_cast<float>(p.zero_threshold);
  float x[kLanes], gy[kLanes], dmin[kLanes];
  bool blocked[kLanes];
  const bool needs_grad =
      p.pass == StreamPass::kGammaLast || p.pass == StreamPass::kReduce || p.pass == StreamPass::kGradInput;
  load_block(p.x, base, count, p.kind, x);
  if (needs_grad) {
    load_block(p.grad, base, count, p.kind, gy);
  } else {
    EDKM_LANES(l) gy[l] = 0.0f;
  }
  EDKM_LANES(l) blocked[l] = p.block_zero && x[l] != 0.0f;
  const float* ch = static_cast<const float*>(p.c_hist) + g * (p.max_iter + 1) * int64_t(K);
  const float* ish = static_cast<const float*>(p.inv_s_hist) + g * p.max_iter * int64_t(K);
  const float* gh = static_cast<const float*>(p.gamma_hist) + g * (p.max_iter + 1) * int64_t(K);
  float* prob = s.prob.data();
  double* acc = s.acc.data();
  // Lanes past `count` (they repeat the last value) contribute nothing to the partials.
  double live[kLanes];
  EDKM_LANES(l) live[l] = l < count ? 1.0 : 0.0;

  switch (p.pass) {
    case StreamPass::kStats: {
      block_attention(p, x, blocked, ch + p.level * int64_t(K), prob, dmin);
      for (int j = 0; j < K; ++j) {
        const float* pj = prob + j * kLanes;
        double* m = acc + static_cast<size_t>(j) * kLanes;
        double* sj = acc + static_cast<size_t>(K + j) * kLanes;
        EDKM_LANES(l) {
          const double a = static_cast<double>(pj[l] > zt ? pj[l] : zt) * live[l];
          m[l] += a * static_cast<double>(x[l]);
          sj[l] += a;
        }
      }
      double* in = acc + static_cast<size_t>(2 * K) * kLanes;
      EDKM_LANES(l) in[l] += static_cast<double>(dmin[l]) * live[l];
      break;
    }
    case StreamPass::kOutput: {
      const float* c = ch + (T - 1) * int64_t(K);
      block_attention(p, x, blocked, c, prob, dmin);
      float y[kLanes];
      EDKM_LANES(l) y[l] = 0;
      for (int j = 0; j < K; ++j) {
        const float* pj = prob + j * kLanes;
        const float cj = c[K + j];
        EDKM_LANES(l) y[l] += (pj[l] > zt ? pj[l] : zt) * cj;
      }
      store_block(p.out, base, count, p.kind, y, false);
      break;
    }
    case StreamPass::kGammaLast: {
      block_attention(p, x, blocked, ch + (T - 1) * int64_t(K), prob, dmin);
      for (int j = 0; j < K; ++j) {
        const float* pj = prob + j * kLanes;
        double* m = acc + static_cast<size_t>(j) * kLanes;
        EDKM_LANES(l)
        m[l] += static_cast<double>(pj[l] > zt ? pj[l] : zt) * static_cast<double>(gy[l]) * live[l];
      }
      break;
    }
    case StreamPass::kReduce: {
      const int t = p.level;
      float xbar[kLanes];  // fused gradient (out set): level t's share of dL/dx from the same row
      EDKM_LANES(l) xbar[l] = 0;
      block_backward_level(p, x, gy, blocked, ch + t * int64_t(K), ch + (t + 1) * int64_t(K), ish + t * int64_t(K),
                           gh + (t + 1) * int64_t(K), t == T - 1, live, s, p.out ? xbar : nullptr, true);
      if (p.out) store_block(p.out, base, count, p.kind, xbar, true);
      break;
    }
    case StreamPass::kGradInput: {
      float xbar[kLanes];
      EDKM_LANES(l) xbar[l] = 0;
      const int levels = std::min(T, p.grad_levels);
      for (int t = 0; t < levels; ++t)
        block_backward_level(p, x, gy, blocked, ch + t * int64_t(K), ch + (t + 1) * int64_t(K), ish + t * int64_t(K),
                             gh + (t + 1) * int64_t(K), t == T - 1, live, s, xbar, false);
      store_block(p.out, base, count, p.kind, xbar, p.accumulate);
      break;
    }
  }
}

// A work item (group g, vectors [begin, end)): blocks of kLanes; partials summed lane by lane
// into out (width doubles) when the pass reduces.
inline void run_item(const StreamParams& p, int64_t g, int64_t begin, int64_t end, Scratch& s, double* out) {
  std::fill(s.acc.begin(), s.acc.end(), 0.0);
  for (int64_t i = begin; i < end; i += kLanes)
    block_pass(p, g, i, static_cast<int>(std::min<int64_t>(kLanes, end - i)), s);
  if (!out) return;
  for (int64_t w = 0; w < p.width; ++w) {
    double v = 0;
    EDKM_LANES(l) v += s.acc[static_cast<size_t>(w) * kLanes + l];
    out[w] = v;
  }
}

}  // namespace edkm::kernels::EDKM_STREAM_ISA

namespace edkm::kernels::EDKM_STREAM_ISA {
// Items [item_begin, item_end) of pass p (cluster_dim 1, fp32 compute), one scratch per call.
inline void stream_items_block(const StreamParams& p, int64_t item_begin, int64_t item_end) {
  const FlushDenormalResults ftz;
  Scratch s(p);
  const bool reduces = stream_pass_reduces(p.pass);
  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t g = item / p.chunks, c = item % p.chunks;
    if (!stream_group_active(p, g)) continue;
    run_item(p, g, c * p.chunk, std::min(p.n, (c + 1) * p.chunk), s, reduces ? p.partials + item * p.width : nullptr);
  }
}
}  // namespace edkm::kernels::EDKM_STREAM_ISA
