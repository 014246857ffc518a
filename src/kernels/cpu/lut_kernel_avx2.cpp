// LUT matmul rows for AVX2 + FMA (compiled with -mavx2 -mfma; chosen at run time by
// lut_kernel.cpp; the rows themselves: lut_rows.h). 8 indices are unpacked by one byte shuffle
// and per-lane variable shifts or, at 8 bits, zero-extended from bytes (1-4 bit GEMV rows that
// start on a byte: 32 / bits indices per lane, Wide); the LUT
// sits in one register (bits <= 3, vpermps), two (4 bits, blended on index bit 3), or is gathered
// from L1.
#include <immintrin.h>

#include <cstring>
#include <vector>

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

// Wide steps (1-4 bit rows that start on a byte): each 32-bit lane holds STEPS = 32 / bits
// consecutive indices straight from the stream, 8 at 3 bits (24 bytes: the two 12-byte halves
// loaded into the two 128-bit lanes, one byte shuffle spreading their 3-byte groups into the 32-bit
// lanes), so vpermps reads index STEPS l + s of lane l after a shift by s * bits: per 8 weights a
// shift, the table (one permute; at 4 bits two, blended on the index's bit 3) and the FMAs, against
// a broadcast load, a byte shuffle and a variable shift more (Decoder). x is put in the lanes'
// order once per call. The AVX-512 rows' scheme (lut_rows_avx512.h, Wide) at 8 lanes; one
// thread in cache, SmolLM2 and LLaMA-7B shapes: 1.5-1.7x faster than the Decoder rows at 3 bits,
// 1.3x at 4 (benchmarks/results/lut_inference.md).
template <int BITS>
struct Wide {
  static constexpr int kSteps = BITS == 3 ? 8 : 32 / BITS;
  static constexpr int kIndices = 8 * kSteps;  // per step
  __m256i spread = _mm256_setzero_si256();
  Wide() {
    if constexpr (BITS == 3) {
      alignas(32) uint8_t sp[32];
      for (int h = 0; h < 2; ++h)
        for (int l = 0; l < 4; ++l)
          for (int t = 0; t < 4; ++t) sp[16 * h + 4 * l + t] = static_cast<uint8_t>(3 * l + (t < 3 ? t : 2));
      spread = _mm256_load_si256(reinterpret_cast<const __m256i*>(sp));
    }
  }
  // The lanes of the kIndices indices from `packed` (3 bits: reads 28 bytes; the stream's padding
  // covers the last step).
  __m256i operator()(const uint8_t* packed) const {
    if constexpr (BITS == 3)
      return _mm256_shuffle_epi8(
          _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(packed + 12), reinterpret_cast<const __m128i*>(packed)),
          spread);
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed));
  }
};

// R rows of W (rows[i], LUT t[i] reloaded when its group changes: cur[i]) against M rows of x
// (xp: x in the lanes' order, wide columns); C FMA chains per (row of W, row of x), enough
// independent chains to cover an FMA's latency.
template <int M, int BITS, int R>
inline void wide_rows(const LutParams& p, const float* x, const float* xp, int64_t wide, const Wide<BITS>& lanes,
                      Avx2::Decoder<0>& dec, const int64_t (&rows)[R], Avx2::Table<BITS <= 3 ? 0 : 1> (&t)[R],
                      int64_t (&cur)[R], float* y) {
  using W = Wide<BITS>;
  constexpr int kSteps = W::kSteps, L = Avx2::kLanes, C = M * R >= 4 ? 1 : 4 / (M * R);
  const int64_t in = p.in, row_bytes = in * BITS / 8;
  const float* lut[R];
  const uint8_t* w[R];
  __m256 acc[R][M][C];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) {
    lut[i] = lut_rows::row_lut(p, rows[i], t[i], cur[i]);
    w[i] = p.packed + rows[i] * row_bytes;
    for (int j = 0; j < M; ++j)
      for (int k = 0; k < C; ++k) acc[i][j][k] = _mm256_setzero_ps();
  }
  for (int64_t c = 0; c < wide; c += W::kIndices) {
    __m256i v[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) v[i] = lanes(w[i] + c / 8 * BITS);
#pragma GCC unroll 32
    for (int s = 0; s < kSteps; ++s) {
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const __m256 wv = t[i](_mm256_srli_epi32(v[i], BITS * s));
#pragma GCC unroll 4
        for (int j = 0; j < M; ++j)
          acc[i][j][s % C] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp + j * wide + c + L * s), acc[i][j][s % C]);
      }
    }
  }
  float dot[R][M];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < M; ++j) {
      __m256 a = acc[i][j][0];
      for (int k = 1; k < C; ++k) a = _mm256_add_ps(a, acc[i][j][k]);
      dot[i][j] = Avx2::sum(a);
    }
  // The columns after the wide steps: 8 at a time (dec), then one by one.
  for (int i = 0; i < R; ++i) {
    const uint64_t row_bit = static_cast<uint64_t>(rows[i]) * static_cast<uint64_t>(in) * BITS;
    dec.row(row_bit);
    __m256 rest[M];
    for (int j = 0; j < M; ++j) rest[j] = _mm256_setzero_ps();
    int64_t c = wide;
    for (; c + L <= in; c += L) {
      const __m256 wv = t[i](dec(p.packed, row_bit + static_cast<uint64_t>(c) * BITS));
      for (int j = 0; j < M; ++j) rest[j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + j * in + c), rest[j]);
    }
    float tail[M] = {};
    for (; c < in; ++c) {
      const float wc = lut[i][lut_index_at(w[i], static_cast<uint64_t>(c) * BITS, BITS)];
      for (int j = 0; j < M; ++j) tail[j] += wc * x[j * in + c];
    }
    for (int j = 0; j < M; ++j)
      y[j * p.out + rows[i]] = lut_finish(p, rows[i], dot[i][j] + Avx2::sum(rest[j]) + tail[j]);
  }
}

template <int M, int BITS>
void gemv_rows_wide(const LutParams& p, const float* x, float* y, int64_t r0, int64_t r1) {
  using W = Wide<BITS>;
  constexpr int kSteps = W::kSteps, L = Avx2::kLanes;
  using Table = Avx2::Table<BITS <= 3 ? 0 : 1>;
  const int64_t in = p.in, wide = in / W::kIndices * W::kIndices;
  const W lanes;
  Avx2::Decoder<0> dec(BITS);                            // the columns after the wide steps
  std::vector<float> xp(static_cast<size_t>(M * wide));  // x in the lanes' order
  for (int j = 0; j < M; ++j)
    for (int64_t c = 0; c < wide; c += W::kIndices)
      for (int s = 0; s < kSteps; ++s)
        for (int l = 0; l < L; ++l) xp[j * wide + c + L * s + l] = x[j * in + c + kSteps * l + s];
  int64_t r = r0;
  if constexpr (M == 1) {
    // One row of x (decode): G rows at a time, 1 / G of the range apart, G sequential streams
    // from DRAM per thread (as the AVX-512 rows, gemv_row_group); G = 4, 2 at 4 bits (two
    // registers per table).
    constexpr int G = BITS <= 3 ? 4 : 2;
    Table tabs[G];
    int64_t cur[G];
    for (int i = 0; i < G; ++i) cur[i] = -1;
    const int64_t h = (r1 - r0) / G;
    for (int64_t k = 0; k < h; ++k) {
      int64_t rows[G];
      for (int i = 0; i < G; ++i) rows[i] = r0 + i * h + k;
      wide_rows<1, BITS, G>(p, x, xp.data(), wide, lanes, dec, rows, tabs, cur, y);
    }
    r = r0 + G * h;
  }
  Table table[1];
  int64_t current[1] = {-1};
  for (; r < r1; ++r) wide_rows<M, BITS, 1>(p, x, xp.data(), wide, lanes, dec, {r}, table, current, y);
}

template <int BITS>
void gemv_wide(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  switch (m) {
    case 1:
      return gemv_rows_wide<1, BITS>(p, x, y, r0, r1);
    case 2:
      return gemv_rows_wide<2, BITS>(p, x, y, r0, r1);
    case 3:
      return gemv_rows_wide<3, BITS>(p, x, y, r0, r1);
    default:
      return gemv_rows_wide<4, BITS>(p, x, y, r0, r1);
  }
}

}  // namespace

void lut_gemv_rows_avx2(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  if (p.bits <= 4 && (p.in * p.bits) % 8 == 0) {
    const int64_t wide = p.bits == 3 ? 64 : 256 / p.bits;  // indices per wide step
    if (p.in >= wide) {
      switch (p.bits) {
        case 1:
          return gemv_wide<1>(p, x, m, y, r0, r1);
        case 2:
          return gemv_wide<2>(p, x, m, y, r0, r1);
        case 3:
          return gemv_wide<3>(p, x, m, y, r0, r1);
        default:
          return gemv_wide<4>(p, x, m, y, r0, r1);
      }
    }
  }
  lut_rows::gemv<Avx2>(p, x, m, y, r0, r1);
}

void lut_decode_rows_avx2(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  lut_rows::decode<Avx2>(p, r0, r1, out);
}

}  // namespace edkm::kernels
