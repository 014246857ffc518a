#pragma once
// 16 floats as one value for the vectorised streaming passes (stream_block.h): one __m512 under
// AVX-512, two __m256 under AVX2 + FMA, with the few operations the passes need, and fp64
// accumulation of 16 lanes folded into 8 doubles (D8: one value, so a block loop can hold the
// partial sums in registers). Written out rather than left to the
// auto-vectoriser: measured on 2026-12-04, GCC kept the lane loops with a branch (centroid 0's
// distance, keep-sparsity) or two inner loops scalar, and those were half of every pass.
//
// Include after defining EDKM_STREAM_ISA (the namespace of this instantiation: the types differ
// per instruction set, so they must not share a name across translation units).
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/vec_exp.h"

namespace edkm::kernels::EDKM_STREAM_ISA {

#if defined(__AVX512F__)
struct F16 {
  __m512 v;
};
struct M16 {
  __mmask16 m;
};
inline F16 load16(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void store16(float* p, F16 a) { _mm512_storeu_ps(p, a.v); }
inline F16 set16(float s) { return {_mm512_set1_ps(s)}; }
inline F16 operator+(F16 a, F16 b) { return {_mm512_add_ps(a.v, b.v)}; }
inline F16 operator-(F16 a, F16 b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline F16 operator*(F16 a, F16 b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline F16 fma16(F16 a, F16 b, F16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }  // a b + c, rounded once
inline F16 min16(F16 a, F16 b) { return {_mm512_min_ps(a.v, b.v)}; }
inline F16 max16(F16 a, F16 b) { return {_mm512_max_ps(a.v, b.v)}; }
inline F16 recip16(F16 a) { return {_mm512_div_ps(_mm512_set1_ps(1.0f), a.v)}; }
inline M16 lt16(F16 a, F16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ)}; }
inline M16 ge16(F16 a, F16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GE_OQ)}; }
inline M16 gt16(F16 a, F16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ)}; }
inline M16 ne16(F16 a, F16 b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_NEQ_UQ)}; }
inline M16 first16(int count) { return {static_cast<__mmask16>(count >= 16 ? 0xFFFF : (1u << count) - 1)}; }
inline F16 select16(M16 m, F16 yes, F16 no) { return {_mm512_mask_mov_ps(no.v, m.m, yes.v)}; }
inline F16 exp16(F16 a) { return {vec::exp16(a.v)}; }
// 16 bf16 patterns as floats (exact), and 16 floats to bf16 patterns rounded to nearest even as
// kernels/dtype_math.h's bf16_round_bits does (the same integer arithmetic, lane by lane).
inline F16 load16_bf16(const uint16_t* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
}
inline void store16_bf16(uint16_t* p, F16 a) {
  const __m512i u = _mm512_castps_si512(a.v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), odd), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));  // NaN
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
// 16 lanes widened to fp64 (once per block for the values the centroid loops multiply by).
struct D16 {
  __m512d lo, hi;
};
inline D16 widen16(F16 a) {
  return {_mm512_cvtps_pd(_mm512_castps512_ps256(a.v)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(a.v, 1))};
}
// Eight fp64 partial sums: 16 lanes folded into 8 as they are added, lane l and l + 8 into one
// (fewer accumulators, so that a block loop can keep them in registers). Each product is exact
// in fp64; one rounding per add.
struct D8 {
  __m512d v;
};
inline D8 zero8() { return {_mm512_setzero_pd()}; }
inline void store8(double* p, D8 a) { _mm512_storeu_pd(p, a.v); }
// acc + double(a) (x b), lanes folded.
inline D8 fold_add(D8 acc, F16 a) {
  const D16 w = widen16(a);
  return {_mm512_add_pd(acc.v, _mm512_add_pd(w.lo, w.hi))};
}
inline D8 fold_mul_add(D8 acc, F16 a, const D16& b) {
  const D16 w = widen16(a);
  return {_mm512_add_pd(acc.v, _mm512_fmadd_pd(w.lo, b.lo, _mm512_mul_pd(w.hi, b.hi)))};
}
#else
struct F16 {
  __m256 lo, hi;
};
struct M16 {
  __m256 lo, hi;  // all-ones lanes
};
inline F16 load16(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void store16(float* p, F16 a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
inline F16 set16(float s) { return {_mm256_set1_ps(s), _mm256_set1_ps(s)}; }
inline F16 operator+(F16 a, F16 b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
inline F16 operator-(F16 a, F16 b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
inline F16 operator*(F16 a, F16 b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline F16 fma16(F16 a, F16 b, F16 c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline F16 min16(F16 a, F16 b) { return {_mm256_min_ps(a.lo, b.lo), _mm256_min_ps(a.hi, b.hi)}; }
inline F16 max16(F16 a, F16 b) { return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)}; }
inline F16 recip16(F16 a) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return {_mm256_div_ps(one, a.lo), _mm256_div_ps(one, a.hi)};
}
#define EDKM_VEC16_CMP(name, op) \
  inline M16 name(F16 a, F16 b) { return {_mm256_cmp_ps(a.lo, b.lo, op), _mm256_cmp_ps(a.hi, b.hi, op)}; }
EDKM_VEC16_CMP(lt16, _CMP_LT_OQ)
EDKM_VEC16_CMP(ge16, _CMP_GE_OQ)
EDKM_VEC16_CMP(gt16, _CMP_GT_OQ)
EDKM_VEC16_CMP(ne16, _CMP_NEQ_UQ)
#undef EDKM_VEC16_CMP
inline M16 first16(int count) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), n = _mm256_set1_epi32(count);
  return {_mm256_castsi256_ps(_mm256_cmpgt_epi32(n, lane)),
          _mm256_castsi256_ps(_mm256_cmpgt_epi32(n, _mm256_add_epi32(lane, _mm256_set1_epi32(8))))};
}
inline F16 select16(M16 m, F16 yes, F16 no) {
  return {_mm256_blendv_ps(no.lo, yes.lo, m.lo), _mm256_blendv_ps(no.hi, yes.hi, m.hi)};
}
inline F16 exp16(F16 a) { return {vec::exp8(a.lo), vec::exp8(a.hi)}; }
inline __m256 load8_bf16(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline F16 load16_bf16(const uint16_t* p) { return {load8_bf16(p), load8_bf16(p + 8)}; }
inline __m256i round8_bf16(__m256 a) {  // bf16_round_bits lane by lane, in the low 16 bits
  const __m256i u = _mm256_castps_si256(a);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd), 16);
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(a, a, _CMP_UNORD_Q)));
}
inline void store16_bf16(uint16_t* p, F16 a) {
  // packus interleaves the 128-bit halves of its two sources; the permute restores lane order.
  const __m256i packed = _mm256_packus_epi32(round8_bf16(a.lo), round8_bf16(a.hi));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_permute4x64_epi64(packed, 0xD8));
}
struct D16 {
  __m256d q[4];
};
inline D16 widen16(F16 a) {
  return {{_mm256_cvtps_pd(_mm256_castps256_ps128(a.lo)), _mm256_cvtps_pd(_mm256_extractf128_ps(a.lo, 1)),
           _mm256_cvtps_pd(_mm256_castps256_ps128(a.hi)), _mm256_cvtps_pd(_mm256_extractf128_ps(a.hi, 1))}};
}
struct D8 {
  __m256d lo, hi;  // lanes 0-3 (+ 8-11), 4-7 (+ 12-15)
};
inline D8 zero8() { return {_mm256_setzero_pd(), _mm256_setzero_pd()}; }
inline void store8(double* p, D8 a) {
  _mm256_storeu_pd(p, a.lo);
  _mm256_storeu_pd(p + 4, a.hi);
}
inline D8 fold_add(D8 acc, F16 a) {
  const D16 w = widen16(a);
  return {_mm256_add_pd(acc.lo, _mm256_add_pd(w.q[0], w.q[2])), _mm256_add_pd(acc.hi, _mm256_add_pd(w.q[1], w.q[3]))};
}
inline D8 fold_mul_add(D8 acc, F16 a, const D16& b) {
  const D16 w = widen16(a);
  return {_mm256_add_pd(acc.lo, _mm256_fmadd_pd(w.q[0], b.q[0], _mm256_mul_pd(w.q[2], b.q[2]))),
          _mm256_add_pd(acc.hi, _mm256_fmadd_pd(w.q[1], b.q[1], _mm256_mul_pd(w.q[3], b.q[3])))};
}
#endif

}  // namespace edkm::kernels::EDKM_STREAM_ISA
