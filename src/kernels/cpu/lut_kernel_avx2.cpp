// LUT matmul rows for AVX2 + FMA (compiled with -mavx2 -mfma; chosen at run time by
// lut_kernel.cpp; the rows themselves: lut_rows.h). 8 indices are unpacked from one 64-bit word
// (two 32-bit halves, per-lane variable shifts) or, at 8 bits, zero-extended from bytes; the LUT
// sits in one register (bits <= 3, vpermps), two (4 bits, blended on index bit 3), or is gathered
// from L1.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/lut_isa.h"
#include "kernels/cpu/lut_rows.h"

namespace edkm::kernels {
namespace {

struct Avx2 {
  EDKM_LUT_ISA_BASICS(256)
  static float sum(F v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
  }

  // WIDTH 0: any bits (bits [0, 8 * bits) of the word after the byte shift; <= 57 bits, or bits
  // = 8 on byte boundaries); 8: bytes.
  template <int WIDTH>
  struct Decoder {
    I shifts, mask;
    int32_t b;
    explicit Decoder(int32_t bits)
        : shifts(_mm256_setr_epi32(0, bits, 2 * bits, 3 * bits, 0, bits, 2 * bits, 3 * bits)),
          mask(_mm256_set1_epi32((1 << bits) - 1)),
          b(bits) {}
    void row(uint64_t) {}
    I operator()(const uint8_t* packed, uint64_t bit) const {
      if (WIDTH == 8)
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed + (bit >> 3))));
      uint64_t w;
      std::memcpy(&w, packed + (bit >> 3), sizeof(w));
      w >>= bit & 7;
      const I v = _mm256_set_m128i(_mm_set1_epi32(static_cast<int>(static_cast<uint32_t>(w >> (4 * b)))),
                                   _mm_set1_epi32(static_cast<int>(static_cast<uint32_t>(w))));
      return _mm256_and_si256(_mm256_srlv_epi32(v, shifts), mask);
    }
  };

  // MODE 0: bits <= 3, MODE 1: bits 4, MODE 2: bits >= 5.
  template <int MODE>
  struct Table {
    F lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    const float* base = nullptr;
    void load(const float* lut, int64_t k) {
      base = lut;
      if (MODE == 2) return;
      alignas(32) float buf[16] = {};
      std::memcpy(buf, lut, static_cast<size_t>(k) * sizeof(float));
      lo = _mm256_load_ps(buf);
      hi = _mm256_load_ps(buf + 8);
    }
    F operator()(I idx) const {
      if (MODE == 0) return _mm256_permutevar8x32_ps(lo, idx);
      if (MODE == 1)
        return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                                _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
      return _mm256_i32gather_ps(base, idx, 4);
    }
  };
};

}  // namespace

void lut_gemv_rows_avx2(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  lut_rows::gemv<Avx2>(p, x, m, y, r0, r1);
}

void lut_decode_rows_avx2(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  lut_rows::decode<Avx2>(p, r0, r1, out);
}

}  // namespace edkm::kernels
