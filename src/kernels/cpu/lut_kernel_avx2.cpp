// LUT matmul rows for AVX2 + FMA (compiled with -mavx2 -mfma; chosen at run time by
// lut_kernel.cpp). 8 indices are unpacked from one 64-bit word (two 32-bit halves, per-lane
// variable shifts); the LUT sits in one register (bits <= 3, vpermps), two (4 bits, blended on
// index bit 3), or is gathered from L1.
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

// WIDTH 0: any bits; 8: bytes.
template <int WIDTH>
struct Decoder {
  __m256i shifts, mask;
  int32_t b;
  explicit Decoder(int32_t bits)
      : shifts(_mm256_setr_epi32(0, bits, 2 * bits, 3 * bits, 0, bits, 2 * bits, 3 * bits)),
        mask(_mm256_set1_epi32((1 << bits) - 1)),
        b(bits) {}
  __m256i operator()(const uint8_t* packed, uint64_t bit) const {
    if (WIDTH == 8) return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed + (bit >> 3))));
    const uint64_t w = load_word(packed, bit);
    const __m256i v = _mm256_set_m128i(_mm_set1_epi32(static_cast<int>(static_cast<uint32_t>(w >> (4 * b)))),
                                       _mm_set1_epi32(static_cast<int>(static_cast<uint32_t>(w))));
    return _mm256_and_si256(_mm256_srlv_epi32(v, shifts), mask);
  }
};

// MODE 0: bits <= 3, MODE 1: bits 4, MODE 2: bits >= 5.
template <int MODE>
struct Table {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  const float* base = nullptr;
  void load(const float* lut, int64_t k) {
    base = lut;
    if (MODE == 2) return;
    alignas(32) float buf[16] = {};
    std::memcpy(buf, lut, static_cast<size_t>(k) * sizeof(float));
    lo = _mm256_load_ps(buf);
    hi = _mm256_load_ps(buf + 8);
  }
  __m256 operator()(__m256i idx) const {
    if (MODE == 0) return _mm256_permutevar8x32_ps(lo, idx);
    if (MODE == 1)
      return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                              _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
    return _mm256_i32gather_ps(base, idx, 4);
  }
};

inline float reduce(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

template <int M, int MODE, int WIDTH>
void gemv_rows(const LutParams& p, const float* x, float* y, int64_t r0, int64_t r1) {
  const Decoder<WIDTH> dec(p.bits);
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
    __m256 acc[M], acc2[M];
    for (int j = 0; j < M; ++j) acc[j] = acc2[j] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= in; c += 16, bit += 16 * b) {
      const __m256 w0 = table(dec(p.packed, bit));
      const __m256 w1 = table(dec(p.packed, bit + 8 * b));
      for (int j = 0; j < M; ++j) {
        acc[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + j * in + c), acc[j]);
        acc2[j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + j * in + c + 8), acc2[j]);
      }
    }
    for (; c + 8 <= in; c += 8, bit += 8 * b) {
      const __m256 w0 = table(dec(p.packed, bit));
      for (int j = 0; j < M; ++j) acc[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + j * in + c), acc[j]);
    }
    float tail[M] = {};
    for (; c < in; ++c, bit += b) {
      const float w = lut[lut_index_at(p.packed, bit, p.bits)];
      for (int j = 0; j < M; ++j) tail[j] += w * x[j * in + c];
    }
    for (int j = 0; j < M; ++j) y[j * p.out + r] = lut_finish(p, r, reduce(_mm256_add_ps(acc[j], acc2[j])) + tail[j]);
  }
}

template <int MODE, int WIDTH>
void decode_rows(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  const Decoder<WIDTH> dec(p.bits);
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
    const __m256 vs = _mm256_set1_ps(s);
    float* o = out + (r - r0) * p.in;
    uint64_t bit = static_cast<uint64_t>(r) * static_cast<uint64_t>(p.in) * b;
    int64_t c = 0;
    for (; c + 8 <= p.in; c += 8, bit += 8 * b) _mm256_storeu_ps(o + c, _mm256_mul_ps(table(dec(p.packed, bit)), vs));
    for (; c < p.in; ++c, bit += b) o[c] = lut[lut_index_at(p.packed, bit, p.bits)] * s;
  }
}

template <int MODE, int WIDTH>
void gemv_m(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  switch (m) {
    case 1:
      return gemv_rows<1, MODE, WIDTH>(p, x, y, r0, r1);
    case 2:
      return gemv_rows<2, MODE, WIDTH>(p, x, y, r0, r1);
    case 3:
      return gemv_rows<3, MODE, WIDTH>(p, x, y, r0, r1);
    default:
      return gemv_rows<4, MODE, WIDTH>(p, x, y, r0, r1);
  }
}

}  // namespace

void lut_gemv_rows_avx2(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  if (p.bits == 8) return gemv_m<2, 8>(p, x, m, y, r0, r1);
  if (p.bits <= 3) return gemv_m<0, 0>(p, x, m, y, r0, r1);
  if (p.bits == 4) return gemv_m<1, 0>(p, x, m, y, r0, r1);
  gemv_m<2, 0>(p, x, m, y, r0, r1);
}

void lut_decode_rows_avx2(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  if (p.bits == 8) return decode_rows<2, 8>(p, r0, r1, out);
  if (p.bits <= 3) return decode_rows<0, 0>(p, r0, r1, out);
  if (p.bits == 4) return decode_rows<1, 0>(p, r0, r1, out);
  decode_rows<2, 0>(p, r0, r1, out);
}

}  // namespace edkm::kernels
