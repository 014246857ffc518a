// LUT matmul rows for AVX2 + FMA (compiled with -mavx2 -mfma; chosen at run time by
// lut_kernel.cpp; the rows themselves: lut_rows.h). 8 indices are unpacked by one byte shuffle
// and per-lane variable shifts or, at 8 bits, zero-extended from bytes; the LUT
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

  // The 8 indices starting at stream bit `bit` (inside a row every chunk of 8 starts at the same
  // bit offset within its byte, s = row_bit & 7). WIDTH 0, any bits <= 8: the chunk's 16 bytes are
  // broadcast to both 128-bit lanes, one byte shuffle moves the two bytes holding index k into
  // 32-bit lane k, a per-lane variable shift finishes; the index sits in the low bits with the next
  // indices' bits above it (the tables ignore or mask them). The shuffle controls and shifts of the
  // 8 possible s are built once (the AVX-512 decoder's scheme, 8 lanes). WIDTH 8: bytes,
  // zero-extended.
  template <int WIDTH>
  struct Decoder {
    alignas(32) int8_t ctrl[8][32];
    alignas(32) int32_t shift[8][8];
    I c, sh;
    explicit Decoder(int32_t b) {
      for (int s = 0; s < 8; ++s) {
        for (int k = 0; k < 8; ++k) {
          const int bit = s + k * b, byte = bit >> 3, at = (k / 4) * 16 + (k % 4) * 4;
          ctrl[s][at] = static_cast<int8_t>(byte);
          ctrl[s][at + 1] = static_cast<int8_t>(byte + 1 < 16 ? byte + 1 : 0x80);  // never needed past byte 15
          ctrl[s][at + 2] = ctrl[s][at + 3] = static_cast<int8_t>(0x80);           // zero
          shift[s][k] = bit & 7;
        }
      }
      c = sh = _mm256_setzero_si256();
    }
    void row(uint64_t row_bit) {
      c = _mm256_load_si256(reinterpret_cast<const __m256i*>(ctrl[row_bit & 7]));
      sh = _mm256_load_si256(reinterpret_cast<const __m256i*>(shift[row_bit & 7]));
    }
    I operator()(const uint8_t* packed, uint64_t bit) const {
      if (WIDTH == 8)
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed + (bit >> 3))));
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + (bit >> 3)));
      return _mm256_srlv_epi32(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(bytes), c), sh);
    }
  };

  // MODE 0: bits <= 3, MODE 1: bits 4, MODE 2: bits >= 5. The index lanes may carry other bits
  // above the index: vpermps reads 3 bits, so with the k entries repeated over the 8 (16) slots
  // those bits pick the same entry (MODE 1 blends on bit 3, the index's own); the gather masks.
  template <int MODE>
  struct Table {
    F lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    I mask = _mm256_setzero_si256();
    const float* base = nullptr;
    void load(const float* lut, int64_t k) {
      base = lut;
      mask = _mm256_set1_epi32(static_cast<int32_t>(k - 1));
      if (MODE == 2) return;
      alignas(32) float buf[16];
      for (int i = 0; i < 16; ++i) buf[i] = lut[i % k];
      lo = _mm256_load_ps(buf);
      hi = _mm256_load_ps(buf + 8);
    }
    F operator()(I idx) const {
      if (MODE == 0) return _mm256_permutevar8x32_ps(lo, idx);
      if (MODE == 1)
        return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                                _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
      return _mm256_i32gather_ps(base, _mm256_and_si256(idx, mask), 4);
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
