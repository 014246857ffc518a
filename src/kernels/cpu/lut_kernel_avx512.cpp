// LUT matmul rows for AVX-512 (compiled with -mavx512f -mavx512dq -mfma; chosen at run time by
// lut_kernel.cpp). 16 indices are unpacked from two 64-bit words by per-lane variable shifts; the
// LUT sits in one register (bits <= 4, vpermps), two (5 bits, vpermt2ps), or is gathered from L1.
#include <immintrin.h>

#include <cstring>

#include "kernels/lut_math.h"

namespace edkm::kernels {
namespace {

inline uint64_t load_word(const uint8_t* packed, uint64_t bit) {
  uint64_t w;
  std::memcpy(&w, packed + (bit >> 3), sizeof(w));
  return w >> (bit & 7);
}

struct Decoder {
  __m512i shifts, mask;
  uint64_t half;  // bits of 8 indices
  explicit Decoder(int32_t b)
      : shifts(_mm512_setr_epi64(0, b, 2 * b, 3 * b, 4 * b, 5 * b, 6 * b, 7 * b)),
        mask(_mm512_set1_epi64((1LL << b) - 1)),
        half(8u * static_cast<uint64_t>(b)) {}
  // The 16 indices starting at stream bit `bit` (8 * bits <= 57 after the byte shift, or bits = 8
  // on byte boundaries).
  __m512i operator()(const uint8_t* packed, uint64_t bit) const {
    const __m512i a = _mm512_and_si512(
        _mm512_srlv_epi64(_mm512_set1_epi64(static_cast<long long>(load_word(packed, bit))), shifts), mask);
    const __m512i c = _mm512_and_si512(
        _mm512_srlv_epi64(_mm512_set1_epi64(static_cast<long long>(load_word(packed, bit + half))), shifts), mask);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(a)), _mm512_cvtepi64_epi32(c), 1);
  }
};

// MODE 0: bits <= 4, MODE 1: bits 5, MODE 2: bits >= 6.
template <int MODE>
struct Table {
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  const float* base = nullptr;
  void load(const float* lut, int64_t k) {
    base = lut;
    if (MODE == 2) return;
    alignas(64) float buf[32] = {};
    std::memcpy(buf, lut, static_cast<size_t>(k) * sizeof(float));
    lo = _mm512_load_ps(buf);
    hi = _mm512_load_ps(buf + 16);
  }
  __m512 operator()(__m512i idx) const {
    if (MODE == 0) return _mm512_permutexvar_ps(idx, lo);
    if (MODE == 1) return _mm512_permutex2var_ps(lo, idx, hi);
    return _mm512_i32gather_ps(idx, base, 4);
  }
};

template <int M, int MODE>
void gemv_rows(const LutParams& p, const float* x, float* y, int64_t r0, int64_t r1) {
  const Decoder dec(p.bits);
  Table<MODE> table;
  int64_t current = -1;
  const uint64_t b = static_cast<uint64_t>(p.bits);
  const int64_t in = p.in;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t g = r / p.rows_per_lut;
    const float* lut = p.lut + g * p.lut_stride;
    if (g != current) {
      table.load(lut, p.lut_stride);
      current = g;
    }
    uint64_t bit = static_cast<uint64_t>(r) * static_cast<uint64_t>(in) * b;
    __m512 acc[M], acc2[M];
    for (int j = 0; j < M; ++j) acc[j] = acc2[j] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= in; c += 32, bit += 32 * b) {
      const __m512 w0 = table(dec(p.packed, bit));
      const __m512 w1 = table(dec(p.packed, bit + 16 * b));
      for (int j = 0; j < M; ++j) {
        acc[j] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + j * in + c), acc[j]);
        acc2[j] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + j * in + c + 16), acc2[j]);
      }
    }
    for (; c + 16 <= in; c += 16, bit += 16 * b) {
      const __m512 w0 = table(dec(p.packed, bit));
      for (int j = 0; j < M; ++j) acc[j] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + j * in + c), acc[j]);
    }
    float tail[M] = {};
    for (; c < in; ++c, bit += b) {
      const float w = lut[lut_index_at(p.packed, bit, p.bits)];
      for (int j = 0; j < M; ++j) tail[j] += w * x[j * in + c];
    }
    for (int j = 0; j < M; ++j)
      y[j * p.out + r] = lut_finish(p, r, _mm512_reduce_add_ps(_mm512_add_ps(acc[j], acc2[j])) + tail[j]);
  }
}

template <int MODE>
void decode_rows(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  const Decoder dec(p.bits);
  Table<MODE> table;
  int64_t current = -1;
  const uint64_t b = static_cast<uint64_t>(p.bits);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t g = r / p.rows_per_lut;
    const float* lut = p.lut + g * p.lut_stride;
    if (g != current) {
      table.load(lut, p.lut_stride);
      current = g;
    }
    const float s = p.scale ? p.scale[r] : 1.0f;
    const __m512 vs = _mm512_set1_ps(s);
    float* o = out + (r - r0) * p.in;
    uint64_t bit = static_cast<uint64_t>(r) * static_cast<uint64_t>(p.in) * b;
    int64_t c = 0;
    for (; c + 16 <= p.in; c += 16, bit += 16 * b) _mm512_storeu_ps(o + c, _mm512_mul_ps(table(dec(p.packed, bit)), vs));
    for (; c < p.in; ++c, bit += b) o[c] = lut[lut_index_at(p.packed, bit, p.bits)] * s;
  }
}

template <int MODE>
void gemv_m(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  switch (m) {
    case 1:
      return gemv_rows<1, MODE>(p, x, y, r0, r1);
    case 2:
      return gemv_rows<2, MODE>(p, x, y, r0, r1);
    case 3:
      return gemv_rows<3, MODE>(p, x, y, r0, r1);
    default:
      return gemv_rows<4, MODE>(p, x, y, r0, r1);
  }
}

}  // namespace

void lut_gemv_rows_avx512(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  if (p.bits <= 4) return gemv_m<0>(p, x, m, y, r0, r1);
  if (p.bits == 5) return gemv_m<1>(p, x, m, y, r0, r1);
  gemv_m<2>(p, x, m, y, r0, r1);
}

void lut_decode_rows_avx512(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  if (p.bits <= 4) return decode_rows<0>(p, r0, r1, out);
  if (p.bits == 5) return decode_rows<1>(p, r0, r1, out);
  decode_rows<2>(p, r0, r1, out);
}

}  // namespace edkm::kernels
