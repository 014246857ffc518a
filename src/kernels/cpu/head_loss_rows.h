#pragma once
// One row of the fused head loss (head_loss_kernel.h), written once over vec16.h's 16-lane values
// and built per instruction set (head_loss_kernel_avx2.cpp, head_loss_kernel_avx512.cpp); include
// after defining EDKM_STREAM_ISA, the namespace of the build.
//
// Three passes over the row (a SmolLM2 row, 49,152 fp32 logits of each model, stays in L2 after the
// first): the maxima; the sums Z1 = sum e^(s - ms), Zs = sum e^((s - ms) / T), Zt = sum
// e^((t - mt) / T) and A = sum e^((t - mt) / T) (t - mt - s + ms), so that
//   ce = ms + log Z1 - s[target],  KL = A / (T Zt) + log Zs - log Zt
// (sum_v p (log p - log q) with log p = (t - mt) / T - log Zt, log q = (s - ms) / T - log Zs); then
// the gradient from the same exponentials. At T = 2 the cross entropy's e^(s - ms) is the square of
// e^((s - ms) / 2), at T = 1 the same value: one exp fewer per logit and pass. Sums: fp32 lanes over
// 64 blocks of 16, then fp64.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/head_loss_kernel.h"
#include "kernels/cpu/vec16.h"

namespace edkm::kernels::EDKM_STREAM_ISA {

inline float hmax16(F16 v) {
  alignas(64) float b[16];
  store16(b, v);
  return *std::max_element(b, b + 16);
}
inline double hsum8(D8 v) {
  double b[8];
  store8(b, v);
  double r = 0;
  for (double x : b) r += x;
  return r;
}

// TPOW: 1 (T = 1: e^(s - ms) is the KL's exponential), 2 (T = 2: its square), 0 (its own exp).
template <bool CE, bool KL, int TPOW>
void head_loss_row_t(const HeadLossRows& p, int64_t row, float ce_c, float kl_c) {
  const int64_t V = p.vocab, body = V / 16 * 16;
  float* s = p.s + row * V;
  const float* t = KL ? p.t + row * V : nullptr;
  const float inv_t = 1.0f / p.temperature;
  // Pass 1: the maxima.
  F16 vms = set16(-INFINITY), vmt = vms;
  for (int64_t v = 0; v < body; v += 16) {
    vms = max16(vms, load16(s + v));
    if (KL) vmt = max16(vmt, load16(t + v));
  }
  float ms = hmax16(vms), mt = KL ? hmax16(vmt) : 0.0f;
  for (int64_t v = body; v < V; ++v) {
    ms = std::max(ms, s[v]);
    if (KL) mt = std::max(mt, t[v]);
  }
  // Pass 2: the sums.
  const F16 bms = set16(ms), bmt = set16(mt), binv = set16(inv_t), zero = set16(0.0f);
  D8 z1 = zero8(), zs = zero8(), zt = zero8(), za = zero8();
  auto exps = [&](F16 ds, F16 dt, F16& e1, F16& es, F16& et) {
    if (KL) {
      es = exp16(ds * binv);
      et = exp16(dt * binv);
    }
    if (CE) e1 = TPOW == 1 ? es : TPOW == 2 ? es * es : exp16(ds);
  };
  for (int64_t v0 = 0; v0 < body; v0 += 1024) {
    F16 a1 = zero, as = zero, at = zero, aa = zero;
    for (int64_t v = v0, end = std::min(body, v0 + 1024); v < end; v += 16) {
      const F16 ds = load16(s + v) - bms, dt = KL ? load16(t + v) - bmt : zero;
      F16 e1 = zero, es = zero, et = zero;
      exps(ds, dt, e1, es, et);
      if (CE) a1 = a1 + e1;
      if (KL) {
        as = as + es;
        at = at + et;
        // p = 0 adds 0: a -inf teacher logit would make 0 x -inf.
        aa = aa + select16(gt16(et, zero), et * (dt - ds), zero);
      }
    }
    z1 = fold_add(z1, a1);
    zs = fold_add(zs, as);
    zt = fold_add(zt, at);
    za = fold_add(za, aa);
  }
  double Z1 = hsum8(z1), Zs = hsum8(zs), Zt = hsum8(zt), A = hsum8(za);
  for (int64_t v = body; v < V; ++v) {
    const float ds = s[v] - ms, dt = KL ? t[v] - mt : 0.0f;
    if (CE) Z1 += std::exp(static_cast<double>(ds));
    if (KL) {
      const double et = std::exp(static_cast<double>(dt) * inv_t);
      Zs += std::exp(static_cast<double>(ds) * inv_t);
      Zt += et;
      if (et > 0) A += et * (static_cast<double>(dt) - ds);
    }
  }
  const int64_t target = CE ? p.target[row] : 0;
  if (CE) p.ce_out[row] = ms + std::log(Z1) - s[target];
  if (KL) p.kl_out[row] = A / Zt * inv_t + std::log(Zs) - std::log(Zt);
  if (!p.grad) return;
  // Pass 3: d loss / d s = ce_c (softmax(s) - onehot) + kl_c (q - p), over s.
  const float c1 = CE ? static_cast<float>(ce_c / Z1) : 0.0f;
  const float cs = KL ? static_cast<float>(kl_c / Zs) : 0.0f, ct = KL ? static_cast<float>(kl_c / Zt) : 0.0f;
  const F16 bc1 = set16(c1), bcs = set16(cs), bct = set16(ct);
  for (int64_t v = 0; v < body; v += 16) {
    const F16 ds = load16(s + v) - bms, dt = KL ? load16(t + v) - bmt : zero;
    F16 e1 = zero, es = zero, et = zero;
    exps(ds, dt, e1, es, et);
    F16 g = zero;
    if (CE) g = bc1 * e1;
    if (KL) g = fma16(bcs, es, g) - bct * et;
    store16(s + v, g);
  }
  for (int64_t v = body; v < V; ++v) {
    const float ds = s[v] - ms, dt = KL ? t[v] - mt : 0.0f;
    float g = 0;
    if (CE) g += c1 * std::exp(ds);
    if (KL) g += cs * std::exp(ds * inv_t) - ct * std::exp(dt * inv_t);
    s[v] = g;
  }
  if (CE) s[target] -= ce_c;
}

template <bool CE, bool KL>
void head_loss_row_ce_kl(const HeadLossRows& p, int64_t row, float ce_c, float kl_c) {
  if (KL && p.temperature == 1.0f) return head_loss_row_t<CE, KL, 1>(p, row, ce_c, kl_c);
  if (KL && p.temperature == 2.0f) return head_loss_row_t<CE, KL, 2>(p, row, ce_c, kl_c);
  head_loss_row_t<CE, KL, 0>(p, row, ce_c, kl_c);
}

// A row's terms: the cross entropy where it has a target (ce_coef != 0), the KL where it is in it.
// A row with neither has a zero gradient.
inline void head_loss_row(const HeadLossRows& p, int64_t row) {
  const float ce_c = p.ce ? p.ce_coef[row] : 0.0f, kl_c = p.kl ? p.kl_coef[row] : 0.0f;
  const bool ce = ce_c != 0.0f, kl = kl_c != 0.0f;
  if (p.ce) p.ce_out[row] = 0.0;
  if (p.kl) p.kl_out[row] = 0.0;
  if (ce && kl) return head_loss_row_ce_kl<true, true>(p, row, ce_c, kl_c);
  if (ce) return head_loss_row_ce_kl<true, false>(p, row, ce_c, kl_c);
  if (kl) return head_loss_row_ce_kl<false, true>(p, row, ce_c, kl_c);
  if (p.grad) std::fill(p.s + row * p.vocab, p.s + (row + 1) * p.vocab, 0.0f);
}

}  // namespace edkm::kernels::EDKM_STREAM_ISA
