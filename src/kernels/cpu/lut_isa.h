#pragma once
// The members of a lut_rows.h `Isa` struct that follow from the vector width, for the x86 sets
// whose intrinsics differ only in their width prefix: BITS 256 (_mm256_*, __m256) or 512
// (_mm512_*, __m512). The struct adds sum(), Decoder and Table. dispatch() picks the Table MODE
// from the LUT size: 0 when the 2^bits entries fit one register (one permute), 1 when they fit
// two, 2 otherwise (gathered); 8-bit indices are read as bytes (WIDTH 8).
#include <immintrin.h>

#define EDKM_LUT_ISA_BASICS(BITS)                                       \
  static constexpr int kLanes = (BITS) / 32;                            \
  using F = __m##BITS;                                                  \
  using I = __m##BITS##i;                                               \
  static F zero() { return _mm##BITS##_setzero_ps(); }                  \
  static F load(const float* p) { return _mm##BITS##_loadu_ps(p); }     \
  static void store(float* p, F v) { _mm##BITS##_storeu_ps(p, v); }     \
  static F fma(F a, F b, F c) { return _mm##BITS##_fmadd_ps(a, b, c); } \
  static F mul(F a, F b) { return _mm##BITS##_mul_ps(a, b); }           \
  static F set1(float v) { return _mm##BITS##_set1_ps(v); }             \
  template <class Body>                                                 \
  static void dispatch(int32_t bits, Body&& body) {                     \
    if (bits == 8) return body.template run<2, 8>();                    \
    if ((1 << bits) <= kLanes) return body.template run<0, 0>();        \
    if ((1 << bits) == 2 * kLanes) return body.template run<1, 0>();    \
    body.template run<2, 0>();                                          \
  }
