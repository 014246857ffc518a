#pragma once
// exp of 16 (AVX-512) or 8 (AVX2 + FMA) floats, inline, for the vectorised streaming passes.
//
// Why not SLEEF's vector exp, which these passes used until 2026-12-04: Debian's libsleef is a
// shared library without its inline headers, so every Sleef_expf16_u10 is a call, and a call
// clobbers every vector register the pass keeps live. Measured on this project's CI machine (Zen 4,
// one thread, 8 independent calls per iteration): SLEEF 8.4 ns per 16 lanes, this one 3.8 ns; the
// exps were half of every streaming pass. Accuracy is SLEEF's u10 class: within 1 ulp of the
// correctly rounded exp, checked against fp64 exp on every 7th float of the range by
// tests/stream_test.cpp (StreamingKernels.InlineExpIsWithinOneUlpLikeSleef, which checks SLEEF's
// the same way).
//
// Method (Cody and Waite): k = round(x log2 e), r = x - k ln2 with ln2 split in a 9-bit head (k *
// head is exact for |k| <= 2^8) and a tail, so |r| <= ln2 / 2 + a few ulp; exp(r) by a degree-6
// polynomial in Horner form with FMA (its error, 4.6e-9 relative, is far below half an ulp, 3e-8;
// Horner's rounding makes the 1 ulp; the degree-7 Taylor polynomial before, one FMA more); then
// times 2^k. Ranges: x < ln(FLT_MIN) gives 0 (the result would be subnormal: the passes run with
// flush-to-zero, so SLEEF's result was flushed to the same 0), x > ln(FLT_MAX) gives inf, NaN gives
// NaN, -inf 0.
#include <immintrin.h>

namespace edkm::kernels::vec {

constexpr float kExpLog2e = 1.44269504088896341f;
constexpr float kExpLn2Hi = 0.693359375f;              // 355 / 512: 9 significant bits
constexpr float kExpLn2Lo = -2.12194440054690583e-4f;  // ln 2 - kExpLn2Hi
constexpr float kExpMin = -87.3365447505531f;          // ln(FLT_MIN) = -126 ln 2
constexpr float kExpMax = 88.7228391116729996f;        // ln(FLT_MAX)

// k = round(x log2 e) (ROUND: round to nearest of the product), r = x - k ln 2 in two steps, and
// p = exp(r) for |r| <= ln2 / 2: 1 + r + r^2 q(r), q of degree 4 fitted for the least maximum
// relative error (Lawson's iteration on 60 Chebyshev nodes of [-0.347, 0.347]; 4.6e-9 with the
// coefficients rounded to fp32, against half an ulp, 3e-8), Horner with FMA.
#define EDKM_EXP_REDUCE_POLY6(ROUND, MUL, FMA, FNMADD, SET, x, k, p) \
  const auto k = ROUND(MUL(x, SET(kExpLog2e)));                      \
  auto r = FNMADD(k, SET(kExpLn2Hi), x);                             \
  r = FNMADD(k, SET(kExpLn2Lo), r);                                  \
  auto p = FMA(SET(1.38148421e-3f), r, SET(8.36876594e-3f));         \
  p = FMA(p, r, SET(4.16683927e-2f));                                \
  p = FMA(p, r, SET(1.66665196e-1f));                                \
  p = FMA(p, r, SET(4.99999940e-1f));                                \
  p = FMA(p, r, SET(1.0f));                                          \
  p = FMA(p, r, SET(1.0f))
#define EDKM_EXP_NEAREST (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

#if defined(__AVX512F__)
inline __m512 exp16(__m512 x) {
#define EDKM_EXP_ROUND16(v) _mm512_roundscale_ps((v), EDKM_EXP_NEAREST)
  EDKM_EXP_REDUCE_POLY6(EDKM_EXP_ROUND16, _mm512_mul_ps, _mm512_fmadd_ps, _mm512_fnmadd_ps, _mm512_set1_ps, x, k, p);
#undef EDKM_EXP_ROUND16
  // p 2^k (inf above the range, NaN stays NaN), zeroed below it (-inf too) by the scale's own
  // mask: vscalefps ignores flush-to-zero and would return a subnormal.
  return _mm512_maskz_scalef_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpMin), _CMP_NLT_UQ), p, k);
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
inline __m256 exp8(__m256 x) {
  const __m256 xc = _mm256_min_ps(_mm256_set1_ps(kExpMax), x);  // min returns its second operand for NaN
#define EDKM_EXP_ROUND8(v) _mm256_round_ps((v), EDKM_EXP_NEAREST)
  EDKM_EXP_REDUCE_POLY6(EDKM_EXP_ROUND8, _mm256_mul_ps, _mm256_fmadd_ps, _mm256_fnmadd_ps, _mm256_set1_ps, xc, k, p);
#undef EDKM_EXP_ROUND8
  // 2^k in two factors, so that k = -126 and k = 128 both have normal halves.
  const __m256i ki = _mm256_cvtps_epi32(k), k1 = _mm256_srai_epi32(ki, 1), k2 = _mm256_sub_epi32(ki, k1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
  const __m256 e2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, e1), e2);
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(kExpMin), _CMP_LT_OQ));
  return _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, _mm256_set1_ps(kExpMax), _CMP_GT_OQ));
}
#endif

#undef EDKM_EXP_REDUCE_POLY6
#undef EDKM_EXP_NEAREST

}  // namespace edkm::kernels::vec
