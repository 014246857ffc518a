// LUT matmul rows for AVX-512 (compiled with -mavx512f -mavx512bw -mavx512dq -mfma; chosen at run
// time by lut_kernel.cpp; the rows themselves: lut_rows.h). 16 indices are unpacked by one byte
// shuffle and per-lane shifts (at 8 bits zero-extended from bytes); the LUT sits in one register
// (bits <= 4, vpermps), two (5 bits, vpermt2ps), or is gathered from L1.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/lut_rows.h"

namespace edkm::kernels {
namespace {

struct Avx512 {
  static constexpr int kLanes = 16;
  using F = __m512;
  using I = __m512i;
  static F zero() { return _mm512_setzero_ps(); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static float sum(F v) { return _mm512_reduce_add_ps(v); }

  // The 16 indices starting at stream bit `bit` (inside a row every chunk starts at the same bit
  // offset within its byte, s = row_bit & 7). WIDTH 0, any bits: the chunk's 16 bytes are
  // broadcast to the four 128-bit lanes, one byte shuffle moves the two bytes holding index i into
  // 32-bit lane i, a per-lane variable shift and a mask finish; the shuffle controls and shifts of
  // the 8 possible s are built once. WIDTH 8: bytes, zero-extended.
  template <int WIDTH>
  struct Decoder {
    alignas(64) int8_t ctrl[8][64];
    alignas(64) int32_t shift[8][16];
    I mask, c, sh;
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
    I operator()(const uint8_t* packed, uint64_t bit) const {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + (bit >> 3)));
      if (WIDTH == 8) return _mm512_cvtepu8_epi32(bytes);
      const I v = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(bytes), c);
      return _mm512_and_si512(_mm512_srlv_epi32(v, sh), mask);
    }
  };

  // MODE 0: bits <= 4, MODE 1: bits 5, MODE 2: bits >= 6.
  template <int MODE>
  struct Table {
    F lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
    const float* base = nullptr;
    void load(const float* lut, int64_t k) {
      base = lut;
      if (MODE == 2) return;
      alignas(64) float buf[32] = {};
      std::memcpy(buf, lut, static_cast<size_t>(k) * sizeof(float));
      lo = _mm512_load_ps(buf);
      hi = _mm512_load_ps(buf + 16);
    }
    F operator()(I idx) const {
      if (MODE == 0) return _mm512_permutexvar_ps(idx, lo);
      if (MODE == 1) return _mm512_permutex2var_ps(lo, idx, hi);
      return _mm512_i32gather_ps(idx, base, 4);
    }
  };

  template <class Body>
  static void dispatch(int32_t bits, Body&& body) {
    if (bits == 8) return body.template run<2, 8>();
    if (bits <= 4) return body.template run<0, 0>();
    if (bits == 5) return body.template run<1, 0>();
    body.template run<2, 0>();
  }
};

}  // namespace

void lut_gemv_rows_avx512(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  lut_rows::gemv<Avx512>(p, x, m, y, r0, r1);
}

void lut_decode_rows_avx512(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  lut_rows::decode<Avx512>(p, r0, r1, out);
}

}  // namespace edkm::kernels
