// LUT matmul rows for AVX-512 (compiled with -mavx512f -mavx512bw -mavx512dq -mfma; chosen at run
// time by lut_kernel.cpp). 16 indices are unpacked by a byte shuffle and per-lane shifts; the LUT
// sits in one register (bits <= 4, vpermps), two (5 bits, vpermt2ps), or is gathered from L1.
#include <immintrin.h>

#include <cstring>

#include "kernels/lut_math.h"

namespace edkm::kernels {
namespace {

// The 16 indices starting at stream bit `bit` (inside a row every 16-index chunk starts at the
// same bit offset within its byte, s = row_bit & 7). WIDTH 0, any bits: the chunk's 16 bytes are
// broadcast to the four 128-bit lanes, one byte shuffle moves the two bytes holding index i into
// 32-bit lane i, a per-lane variable shift and a mask finish (one shuffle-port op per 16 indices);
// the shuffle controls and shifts of the 8 possible s are built once. WIDTH 8: bytes, zero-extended.
template <int WIDTH>
struct Decoder {
  alignas(64) int8_t ctrl[8][64];
  alignas(64) int32_t shift[8][16];
  __m512i mask, c, sh;
  explicit Decoder(int32_t b) : mask(_mm512_set1_epi32((1 << b) - 1)) {
    for (int s = 0; s < 8; ++s) {
      for (int i = 0; i < 16; ++i) {
        const int bit = s + i * b, byte = bit >> 3, at = (i / 4) * 16 + (i % 4) * 4;
        ctrl[s][at] = static_cast<int8_t>(byte);
        ctrl[s][at + 1] = static_cast<int8_t>(byte + 1 < 16 ? byte + 1 : 0x80);  // never needed past byte 15
        ctrl[s][at + 2] = ctrl[s][at + 3] = static_cast<int8_t>(0x80);           // zero
        shift[s][i] = bit & 7;
      }
    }
    c = sh = _mm512_setzero_si512();
  }
  void row(uint64_t row_bit) {
    c = _mm512_load_si512(ctrl[row_bit & 7]);
    sh = _mm512_load_si512(shift[row_bit & 7]);
  }
  __m512i operator()(const uint8_t* packed, uint64_t bit) const {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + (bit >> 3)));
    if (WIDTH == 8) return _mm512_cvtepu8_epi32(bytes);
    const __m512i v = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(bytes), c);
    return _mm512_and_si512(_mm512_srlv_epi32(v, sh), mask);
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

template <int M, int MODE, int WIDTH>
void gemv_rows(const LutParams& p, const float* x, float* y, int64_t r0, int64_t r1) {
  Decoder<WIDTH> dec(p.bits);
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
    dec.row(bit);
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

template <int MODE, int WIDTH>
void decode_rows(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  Decoder<WIDTH> dec(p.bits);
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
    dec.row(bit);
    int64_t c = 0;
    for (; c + 16 <= p.in; c += 16, bit += 16 * b)
      _mm512_storeu_ps(o + c, _mm512_mul_ps(table(dec(p.packed, bit)), vs));
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

void lut_gemv_rows_avx512(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  if (p.bits == 8) return gemv_m<2, 8>(p, x, m, y, r0, r1);
  if (p.bits <= 4) return gemv_m<0, 0>(p, x, m, y, r0, r1);
  if (p.bits == 5) return gemv_m<1, 0>(p, x, m, y, r0, r1);
  gemv_m<2, 0>(p, x, m, y, r0, r1);
}

void lut_decode_rows_avx512(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  if (p.bits == 8) return decode_rows<2, 8>(p, r0, r1, out);
  if (p.bits <= 4) return decode_rows<0, 0>(p, r0, r1, out);
  if (p.bits == 5) return decode_rows<1, 0>(p, r0, r1, out);
  decode_rows<2, 0>(p, r0, r1, out);
}

}  // namespace edkm::kernels
