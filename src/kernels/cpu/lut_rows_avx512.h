#pragma once
// LUT matmul rows for AVX-512, written once and built twice: lut_kernel_avx512.cpp (-mavx512f
// -mavx512bw -mavx512dq: Skylake-SP and later) and lut_kernel_avx512_vbmi.cpp (also -mavx512vbmi:
// Ice Lake, Zen 4 and later), chosen at run time by lut_kernel.cpp (LutIsa::kAvx512 /
// kAvx512Vbmi); the parts that need VBMI are under __AVX512VBMI__. Everything here has internal
// linkage, so the two builds never share a function compiled for the other.
//
// 16 indices are unpacked by one byte shuffle and per-lane shifts (Decoder; at 8 bits
// zero-extended from bytes). 1-4 bit rows that start on a byte (gemv_rows_small): 32 / bits
// indices per 32-bit lane straight from the stream, 8 at 3 bits spread from 3-byte groups (Wide),
// the rest with VBMI 64 at a time by a byte permute and a multishift (Unpack64), then 16 at a time;
// a decoding thread reads 4 rows a quarter of its range apart per load of x (gemv_row_group). The
// LUT sits in one register (bits <= 4, vpermps), two (5 bits, vpermt2ps), or is gathered from L1
// (6, 7 bits); the 8-bit GEMV keeps its LUT in 16 registers as byte planes with VBMI (Lut8).
#include <immintrin.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/lut_isa.h"
#include "kernels/cpu/lut_rows.h"

namespace edkm::kernels {
namespace {

struct Avx512 {
  EDKM_LUT_ISA_BASICS(512)
  static float sum(F v) { return _mm512_reduce_add_ps(v); }

  // The 16 indices starting at stream bit `bit` (inside a row every chunk starts at the same bit
  // offset within its byte, s = row_bit & 7). WIDTH 0, any bits: the chunk's 16 bytes are
  // broadcast to the four 128-bit lanes, one byte shuffle moves the two bytes holding index i into
  // 32-bit lane i, a per-lane variable shift finishes (the table masks); the shuffle controls and shifts of
  // the 8 possible s are built once. WIDTH 8: bytes, zero-extended.
  template <int WIDTH>
  struct Decoder {
    alignas(64) int8_t ctrl[8][64];
    alignas(64) int32_t shift[8][16];
    I c, sh;
    explicit Decoder(int32_t b) {
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
    // The index in the low bits of each lane, the next indices' bits above it (the tables mask).
    I operator()(const uint8_t* packed, uint64_t bit) const {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + (bit >> 3)));
      if (WIDTH == 8) return _mm512_cvtepu8_epi32(bytes);
      const I v = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(bytes), c);
      return _mm512_srlv_epi32(v, sh);
    }
  };

  // MODE 0: bits <= 4, MODE 1: bits 5, MODE 2: bits >= 6. The index lanes may carry other bits
  // above the index: vpermps reads 4 bits and vpermt2ps 5, so with the k entries repeated over the
  // 16 (32) slots those bits pick the same entry and need no mask (one instruction fewer per 16
  // weights); the gather masks.
  template <int MODE>
  struct Table {
    F lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
    I mask = _mm512_setzero_si512();
    const float* base = nullptr;
    void load(const float* lut, int64_t k) {
      base = lut;
      mask = _mm512_set1_epi32(static_cast<int32_t>(k - 1));
      if (MODE == 2) return;
      alignas(64) float buf[32];
      for (int i = 0; i < 32; ++i) buf[i] = lut[i % k];
      lo = _mm512_load_ps(buf);
      hi = _mm512_load_ps(buf + 16);
    }
    F operator()(I idx) const {
      if (MODE == 0) return _mm512_permutexvar_ps(idx, lo);
      if (MODE == 1) return _mm512_permutex2var_ps(lo, idx, hi);
      return _mm512_i32gather_ps(_mm512_and_si512(idx, mask), base, 4);
    }
  };
};

#if defined(__AVX512VBMI__)
// 8-bit rows with the whole 256-entry LUT in registers, in place of a gather per 16 weights
// (needs AVX-512 VBMI: Ice Lake, Zen 4 and later; the VBMI build only). The fp32 entries are split
// into their four byte planes; a plane of 256 bytes is two 128-byte tables of two registers, read
// by vpermi2b with the index's low 7 bits and chosen by its bit 7 (one blend). Interleaving the
// planes (unpack bytes, then words) rebuilds the exact fp32 entries, in a lane order that x is put
// in once per call. 64 weights: one load, 8 byte permutes, 4 blends, 8 unpacks, 4 FMAs per row of x.
struct Lut8 {
  __m512i t[4][4];  // plane b: (t[b][0], t[b][1]) entries [0, 128), (t[b][2], t[b][3]) [128, 256)
  void load(const float* lut) {
    alignas(64) uint8_t plane[4][256];
    for (int k = 0; k < 256; ++k) {
      uint32_t u;
      std::memcpy(&u, lut + k, 4);
      for (int b = 0; b < 4; ++b) plane[b][k] = static_cast<uint8_t>(u >> (8 * b));
    }
    for (int b = 0; b < 4; ++b)
      for (int q = 0; q < 4; ++q) t[b][q] = _mm512_load_si512(plane[b] + 64 * q);
  }
  // The 64 weights of indices bytes[0, 64): w[m] holds, in 128-bit lane k, columns 16k + 4m .. + 3.
  void operator()(const uint8_t* bytes, __m512* w) const {
    const __m512i idx = _mm512_loadu_si512(bytes);
    const __mmask64 high = _mm512_movepi8_mask(idx);  // bit 7: entries 128..255
    __m512i v[4];
    for (int b = 0; b < 4; ++b)
      v[b] = _mm512_mask_blend_epi8(high, _mm512_permutex2var_epi8(t[b][0], idx, t[b][1]),
                                    _mm512_permutex2var_epi8(t[b][2], idx, t[b][3]));
    const __m512i lo01 = _mm512_unpacklo_epi8(v[0], v[1]), hi01 = _mm512_unpackhi_epi8(v[0], v[1]);
    const __m512i lo23 = _mm512_unpacklo_epi8(v[2], v[3]), hi23 = _mm512_unpackhi_epi8(v[2], v[3]);
    w[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(lo01, lo23));
    w[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(lo01, lo23));
    w[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(hi01, hi23));
    w[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(hi01, hi23));
  }
};

// The 64 weights of one Lut8 lookup times x (in the lookup's lane order) into two FMA chains.
inline void fma64(const __m512 (&w)[4], const float* x, __m512& a0, __m512& a1) {
  a0 = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(x), a0);
  a1 = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(x + 16), a1);
  a0 = _mm512_fmadd_ps(w[2], _mm512_loadu_ps(x + 32), a0);
  a1 = _mm512_fmadd_ps(w[3], _mm512_loadu_ps(x + 48), a1);
}

// Rows [r0, r1) of 8-bit weights against M rows of x. Where x in lane order passes ~24 KB (past
// the 32 KB L1 beside the weights: 4096 x 11008's 44 KB), batch-1 rows go in pairs of one LUT,
// each row's lookups and FMAs done before the other's start: the second reads x from L1, where
// the first just brought it, x stays a memory operand, and the 16 table registers are not spilled
// (an earlier lockstep that held x and both rows' weights in registers spilled them, and lost
// 1.4-2.2x where x fits L1: pairs are not used there). Each row's next weights are prefetched 2 KB
// ahead: with x streaming through L1 the hardware prefetch of the weights fell behind (measured on
// 4096 x 11008: pairs alone no gain, prefetch alone 2-8%, both 17-19%; benchmarks/results/lut_inference.md).
template <int M>
void gemv_rows8(const LutParams& p, const float* x, float* y, int64_t r0, int64_t r1) {
  const int64_t in = p.in, body = in / 64 * 64;
  std::vector<float> xp(static_cast<size_t>(M * body));  // x in the lookup's lane order
  for (int j = 0; j < M; ++j)
    for (int64_t c = 0; c < body; c += 64)
      for (int m = 0; m < 4; ++m)
        for (int k = 0; k < 4; ++k)
          for (int q = 0; q < 4; ++q) xp[j * body + c + 16 * m + 4 * k + q] = x[j * in + c + 16 * k + 4 * m + q];
  const bool pairs = M == 1 && body * 4 > 24 * 1024;
  Lut8 table;
  int64_t current = -1;
  for (int64_t r = r0; r < r1;) {
    const int64_t g = r / p.rows_per_lut;
    const float* lut = p.lut + g * p.lut_stride;
    if (g != current) {
      table.load(lut);
      current = g;
    }
    const uint8_t* row = p.packed + r * in;
    if (pairs && r + 1 < r1 && (r + 1) / p.rows_per_lut == g) {
      const uint8_t* next = row + in;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
      for (int64_t c = 0; c < body; c += 64) {
        const float* xc = xp.data() + c;
        _mm_prefetch(reinterpret_cast<const char*>(row + c + 2048), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(next + c + 2048), _MM_HINT_T0);
        __m512 w[4];
        table(row + c, w);
        fma64(w, xc, a0, a1);
        table(next + c, w);
        fma64(w, xc, b0, b1);
      }
      float ta = 0, tb = 0;
      for (int64_t c = body; c < in; ++c) {
        ta += lut[row[c]] * x[c];
        tb += lut[next[c]] * x[c];
      }
      y[r] = lut_finish(p, r, _mm512_reduce_add_ps(a0) + _mm512_reduce_add_ps(a1) + ta);
      y[r + 1] = lut_finish(p, r + 1, _mm512_reduce_add_ps(b0) + _mm512_reduce_add_ps(b1) + tb);
      r += 2;
      continue;
    }
    __m512 acc[M][2];
    for (int j = 0; j < M; ++j) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    for (int64_t c = 0; c < body; c += 64) {
      __m512 w[4];
      table(row + c, w);
      for (int j = 0; j < M; ++j) fma64(w, xp.data() + j * body + c, acc[j][0], acc[j][1]);
    }
    for (int j = 0; j < M; ++j) {
      float tail = 0;
      for (int64_t c = body; c < in; ++c) tail += lut[row[c]] * x[j * in + c];
      y[j * p.out + r] = lut_finish(p, r, _mm512_reduce_add_ps(acc[j][0]) + _mm512_reduce_add_ps(acc[j][1]) + tail);
    }
    ++r;
  }
}

// 1-4 bit rows that start on a byte (in * bits a multiple of 8), where the CPU has VBMI: 64
// indices per step are unpacked by one byte permute (qword q of the register gets the stream's
// bytes from q * bits on: the 8 indices 8q .. 8q + 7) and one multishift (byte t of each qword =
// the 8 bits from bit t * bits), so byte i holds index i in its low bits and the next indices'
// bits above it, which the 16-slot table ignores (Avx512::Table<0>: the k entries repeated).
// 32-bit lane l then holds the indices 4l .. 4l + 3; vpermps reads index 4l + s after a shift by
// 8s, and x is put in that lane order once per call. Per 64 weights: one load, two byte shuffles,
// 3 shifts, 4 permutes and 4 FMAs per row of x, against 5 instructions per 16 weights before.
struct Unpack64 {
  __m512i spread, cut;
  __mmask64 bytes;  // the 8 * bits bytes of 64 indices
  explicit Unpack64(int32_t bits) {
    alignas(64) uint8_t sp[64], ct[64];
    for (int q = 0; q < 8; ++q)
      for (int t = 0; t < 8; ++t) {
        sp[8 * q + t] = static_cast<uint8_t>(q * bits + t);
        ct[8 * q + t] = static_cast<uint8_t>(t * bits);
      }
    spread = _mm512_load_si512(sp);
    cut = _mm512_load_si512(ct);
    bytes = (__mmask64{1} << (8 * bits)) - 1;
  }
  __m512i operator()(const uint8_t* packed) const {
    const __m512i raw = _mm512_maskz_loadu_epi8(bytes, packed);
    return _mm512_multishift_epi64_epi8(cut, _mm512_permutexvar_epi8(spread, raw));
  }
};

#endif  // __AVX512VBMI__

// Wide steps (1-4 bit rows): each 32-bit lane holds STEPS = 32 / bits consecutive indices
// straight from the stream (4 bits: 8 nibbles; 2 bits: 16; 1 bit: 32), so vpermps reads index
// STEPS l + s of lane l after a shift by s * bits: per 16 weights one shift, one permute, one FMA,
// and no byte shuffles. 3 bits: one byte permute spreads the 16 groups of 3 bytes (8 indices each)
// of 48 stream bytes into the lanes (STEPS 8, bits 24..31 of a lane any: the table ignores them);
// without VBMI, four 16-byte loads (12 bytes apart) into the four 128-bit lanes and one byte
// shuffle, 20-25% slower than the byte permute on Zen 4.
// Against Unpack64 (a byte permute and a multishift per 64 weights) decode GEMVs took 8-15% less
// time at 3 bits, 13-24% at 1 and 2 (LLaMA-7B shapes out of the caches, 2 threads; SmolLM2 shapes
// in cache, one thread).
template <int BITS>
struct Wide {
  static constexpr int kSteps = BITS == 3 ? 8 : 32 / BITS;
  static constexpr int kIndices = 16 * kSteps;  // per step
  __m512i spread = _mm512_setzero_si512();
  Wide() {  // built per group of rows: one load
    if constexpr (BITS == 3) {
#if defined(__AVX512VBMI__)
      // lane l's 4 bytes from stream bytes 3l, 3l + 1, 3l + 2 (and 3l + 2 again: any)
      alignas(64) static constexpr uint8_t sp[64] = {
          0,  1,  2,  2,  3,  4,  5,  5,  6,  7,  8,  8,  9,  10, 11, 11, 12, 13, 14, 14, 15, 16,
          17, 17, 18, 19, 20, 20, 21, 22, 23, 23, 24, 25, 26, 26, 27, 28, 29, 29, 30, 31, 32, 32,
          33, 34, 35, 35, 36, 37, 38, 38, 39, 40, 41, 41, 42, 43, 44, 44, 45, 46, 47, 47,
      };
#else
      // the same from bytes 12k .. 12k + 11 put in 128-bit lane k: lane l of each from 3l, 3l + 1, 3l + 2
      alignas(64) static constexpr uint8_t sp[64] = {
          0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11,
          0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11,
      };
#endif
      spread = _mm512_load_si512(sp);
    }
  }
  // The lanes of the kIndices indices from `packed` (a byte-aligned step; 3 bits without VBMI
  // reads 52 bytes, within the stream's padding at its end).
  __m512i operator()(const uint8_t* packed) const {
    if constexpr (BITS == 3) {
#if defined(__AVX512VBMI__)
      return _mm512_permutexvar_epi8(spread, _mm512_maskz_loadu_epi8((__mmask64{1} << 48) - 1, packed));
#else
      auto at = [packed](int k) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + 12 * k)); };
      __m512i v = _mm512_castsi128_si512(at(0));
      v = _mm512_inserti32x4(v, at(1), 1);
      v = _mm512_inserti32x4(v, at(2), 2);
      v = _mm512_inserti32x4(v, at(3), 3);
      return _mm512_shuffle_epi8(v, spread);
#endif
    }
    return _mm512_loadu_si512(packed);
  }
};

/// Columns [0, wide_columns) of a 1-4 bit row go in wide steps (Wide), the rest by Unpacks.
int64_t wide_columns(int32_t bits, int64_t in) {
  const int64_t n = bits == 3 ? 128 : bits <= 4 ? 512 / bits : 0;
  return n ? in / n * n : 0;
}

// The columns of a row after its wide steps: with VBMI, 64 at a time by Unpack64 up to `body` (x
// reordered for it, as for the wide steps); then 16 at a time by the Decoder (x in its own order),
// and the last < 16 one by one. Built once per call (the Decoder's tables are 1 KiB).
struct Unpacks {
#if defined(__AVX512VBMI__)
  Unpack64 unpack;
#endif
  Avx512::Decoder<0> dec;
  int64_t wide, body;  // columns [0, wide) in wide steps, [wide, body) by Unpack64
  Unpacks(int32_t bits, int64_t in)
      :
#if defined(__AVX512VBMI__)
        unpack(bits),
#endif
        dec(bits),
        wide(wide_columns(bits, in)) {
    dec.row(0);  // every row starts on a byte
#if defined(__AVX512VBMI__)
    body = in / 64 * 64;
#else
    body = wide;
#endif
  }
};

// One step of STEPS x 16 indices for R rows of W (row i: indices v[i], lane l holding index
// STEPS l + s at bit SHIFT s; LUT t[i]) and M rows of x (reordered, xo: row j at + j * stride,
// step s at + 16 s), into the C FMA chains acc[i][j]. With R > 1 each load of x feeds the R rows'
// FMAs (kept in a register: folded into each FMA it would be loaded R times).
template <int M, int R, int C, int STEPS, int SHIFT>
inline void lut_steps(const Avx512::Table<0> (&t)[R], const __m512i (&v)[R], const float* xo, int64_t stride,
                      __m512 (&acc)[R][M][C]) {
#pragma GCC unroll 32
  for (int sh = 0; sh < STEPS; ++sh) {
    __m512 xs[M];  // R > 1 only (one row of W: the loads stay folded into its FMAs)
    if constexpr (R > 1) {
#pragma GCC unroll 4
      for (int j = 0; j < M; ++j) {
        xs[j] = _mm512_loadu_ps(xo + j * stride + 16 * sh);
        asm("" : "+v"(xs[j]));
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m512 w = t[i](_mm512_srli_epi32(v[i], SHIFT * sh));
#pragma GCC unroll 4
      for (int j = 0; j < M; ++j) {
        const __m512 xj = R > 1 ? xs[j] : _mm512_loadu_ps(xo + j * stride + 16 * sh);
        acc[i][j][sh % C] = _mm512_fmadd_ps(w, xj, acc[i][j][sh % C]);
      }
    }
  }
}

// x's block of 16 STEPS values from c in the order of lut_steps: out[16 s + l] = x[c + STEPS l + s].
void order_x(const float* x, int steps, float* out) {
  for (int sh = 0; sh < steps; ++sh)
    for (int l = 0; l < 16; ++l) out[16 * sh + l] = x[steps * l + sh];
}

// The wide steps of R rows of W (w[i]: row i's stream) over columns [0, wide).
template <int M, int R, int C, int BITS>
inline void wide_steps(const Avx512::Table<0> (&t)[R], const uint8_t* const (&w)[R], const float* xp, int64_t stride,
                       int64_t wide, __m512 (&acc)[R][M][C]) {
  using W = Wide<BITS>;
  const W lanes;
  for (int64_t c = 0; c < wide; c += W::kIndices) {
    __m512i v[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) v[i] = lanes(w[i] + c / 8 * BITS);
    lut_steps<M, R, C, W::kSteps, BITS>(t, v, xp + c, stride, acc);
  }
}

// The R rows rows[i] of W against the M rows of x (xp: x reordered for the steps): y[j * out +
// rows[i]]. Row i's LUT goes into t[i] when its group changes (cur[i]: the group t[i] holds). FMA
// chains per (row of W, row of x): four for one row of W, two for several (R of them are
// independent already).
template <int M, int R>
inline void gemv_row_group(const LutParams& p, const float* x, const float* xp, const Unpacks& un,
                           const int64_t (&rows)[R], Avx512::Table<0> (&t)[R], int64_t (&cur)[R], float* y) {
  constexpr int C = R == 1 ? 4 : 2;
  const int64_t in = p.in, wide = un.wide, body = un.body, row_bytes = in * p.bits / 8;
  const float* lut[R];
  const uint8_t* w[R];
  __m512 acc[R][M][C];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) {
    lut[i] = lut_rows::row_lut(p, rows[i], t[i], cur[i]);
    w[i] = p.packed + rows[i] * row_bytes;
    for (int j = 0; j < M; ++j)
      for (int c = 0; c < C; ++c) acc[i][j][c] = _mm512_setzero_ps();
  }
  switch (p.bits) {
    case 1:
      wide_steps<M, R, C, 1>(t, w, xp, body, wide, acc);
      break;
    case 2:
      wide_steps<M, R, C, 2>(t, w, xp, body, wide, acc);
      break;
    case 3:
      wide_steps<M, R, C, 3>(t, w, xp, body, wide, acc);
      break;
    default:
      wide_steps<M, R, C, 4>(t, w, xp, body, wide, acc);
  }
#if defined(__AVX512VBMI__)
  for (int64_t c = wide; c < body; c += 64) {
    __m512i v[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) v[i] = un.unpack(w[i] + c / 8 * p.bits);
    lut_steps<M, R, C, 4, 8>(t, v, xp + c, body, acc);
  }
#endif
  const int64_t by16 = in / 16 * 16;
  for (int64_t c = body; c < by16; c += 16) {
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      const __m512 wv = t[i](un.dec(w[i], static_cast<uint64_t>(c) * p.bits));
#pragma GCC unroll 4
      for (int j = 0; j < M; ++j) acc[i][j][0] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + j * in + c), acc[i][j][0]);
    }
  }
  // The chains summed with constant indices: a loop over i that also held the tail loop below kept
  // acc in memory, stored at every step.
  float dot[R][M];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < M; ++j) {
      const __m512* a = acc[i][j];
      const __m512 s =
          C == 4 ? _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])) : _mm512_add_ps(a[0], a[1]);
      dot[i][j] = _mm512_reduce_add_ps(s);
    }
  for (int i = 0; i < R; ++i) {
    float tail[M] = {};
    for (int64_t c = by16; c < in; ++c) {
      const float wc = lut[i][lut_index_at(w[i], static_cast<uint64_t>(c) * p.bits, p.bits)];
      for (int j = 0; j < M; ++j) tail[j] += wc * x[j * in + c];
    }
    for (int j = 0; j < M; ++j) y[j * p.out + rows[i]] = lut_finish(p, rows[i], dot[i][j] + tail[j]);
  }
}

template <int M>
void gemv_rows_small(const LutParams& p, const float* x, float* y, int64_t r0, int64_t r1) {
  // Columns [0, wide) in wide steps (Wide: 32 / bits indices per lane, 8 at 3 bits), the rest as
  // Unpacks says (with VBMI up to `body` 64 at a time, Unpack64: 4 per lane).
  const Unpacks un(p.bits, p.in);
  const int64_t in = p.in, wide = un.wide, body = un.body;
  const int steps = p.bits == 3 ? 8 : 32 / p.bits;
  std::vector<float> xp(static_cast<size_t>(M * body));  // x in the unpacks' lane orders
  for (int j = 0; j < M; ++j) {
    for (int64_t c = 0; c < wide; c += 16 * steps) order_x(x + j * in + c, steps, xp.data() + j * body + c);
    for (int64_t c = wide; c < body; c += 64) order_x(x + j * in + c, 4, xp.data() + j * body + c);
  }
  int64_t r = r0;
  if constexpr (M == 1) {
    // One row of x (decode): 4 rows at a time, a quarter of the range apart (rows k, h + k, 2h + k,
    // 3h + k): 4 long sequential streams, which a thread reads from DRAM faster than one. Measured
    // (AVX-512, 2 threads, weights out of the caches, us; benchmarks/results/lut_inference.md):
    // 4 bits 1.6-2.3x, 3 bits 1.1-1.5x on the LLaMA-7B shapes; in cache (one thread, SmolLM2
    // shapes) 0-20% fewer cycles. Adjacent rows were slower (runs of one row each for the
    // prefetchers), 8 rows too (registers). The rows left over (< 4) go one at a time below.
    Avx512::Table<0> tabs[4];
    int64_t cur[4] = {-1, -1, -1, -1};
    const int64_t h = (r1 - r0) / 4;
    for (int64_t k = 0; k < h; ++k)
      gemv_row_group<1, 4>(p, x, xp.data(), un, {r0 + k, r0 + h + k, r0 + 2 * h + k, r0 + 3 * h + k}, tabs, cur, y);
    r = r0 + 4 * h;
  }
  Avx512::Table<0> table[1];
  int64_t current[1] = {-1};
  for (; r < r1; ++r) gemv_row_group<M, 1>(p, x, xp.data(), un, {r}, table, current, y);
}

// y = x W^T for rows [r0, r1) of W (m <= 4 rows of x): this build's best rows.
void gemv_rows_avx512_build(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  // rows(M) for M = m rows of x (1..4; the caller splits larger batches), M a compile-time constant.
  auto by_rows = [m](auto&& rows) {
    switch (m) {
      case 1:
        return rows(std::integral_constant<int, 1>{});
      case 2:
        return rows(std::integral_constant<int, 2>{});
      case 3:
        return rows(std::integral_constant<int, 3>{});
      default:
        return rows(std::integral_constant<int, 4>{});
    }
  };
  if (p.bits <= 4 && (p.in * p.bits) % 8 == 0 && p.in >= 64)
    return by_rows([&](auto M) { gemv_rows_small<decltype(M)::value>(p, x, y, r0, r1); });
#if defined(__AVX512VBMI__)
  if (p.bits == 8 && p.in >= 64) return by_rows([&](auto M) { gemv_rows8<decltype(M)::value>(p, x, y, r0, r1); });
#endif
  lut_rows::gemv<Avx512>(p, x, m, y, r0, r1);
}

}  // namespace
}  // namespace edkm::kernels
