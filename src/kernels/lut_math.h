#pragma once
// Shared math of the LUT matmul kernels (edkm/nn/palettized_linear.h): one definition of the index
// unpacking for the CPU (scalar, AVX2, AVX-512) and CUDA backends. No ATen: raw pointers.
//
// A packed weight of out x in: index i = r * in + c occupies bits [i * bits, (i + 1) * bits) of
// the byte stream `packed`, LSB-first (stream bit j = bit j % 8 of byte j / 8), as the compressed
// checkpoint stores it; `packed` carries kLutPadBytes zero bytes past the stream so 16 bytes may be loaded at any
// index.
//   W[r, c] = lut[(r / rows_per_lut) * lut_stride + index(i)] * (scale ? scale[r] : 1)
#include <cstdint>

#include "edkm/export.h"
#include "kernels/host_device.h"

EDKM_INTERNAL_BEGIN
namespace edkm::kernels {

/// Zero bytes after the index stream: a kernel may load 16 bytes starting at any index's byte.
constexpr int64_t kLutPadBytes = 16;

struct LutParams {
  const uint8_t* packed = nullptr;
  const float* lut = nullptr;    ///< groups x lut_stride
  const float* scale = nullptr;  ///< out, or null
  const float* bias = nullptr;   ///< out, or null
  int64_t out = 0, in = 0;
  int32_t bits = 0;
  int64_t rows_per_lut = 1;
  int64_t lut_stride = 0;  ///< 2^bits
};

/// The index at bit position `bit` of the stream (bits <= 8: two bytes cover it).
EDKM_HOST_DEVICE uint32_t lut_index_at(const uint8_t* packed, uint64_t bit, int32_t bits) {
  const uint64_t byte = bit >> 3;
  const uint32_t v = static_cast<uint32_t>(packed[byte]) | (static_cast<uint32_t>(packed[byte + 1]) << 8);
  return (v >> (bit & 7)) & ((1u << bits) - 1u);
}

/// Index j (0..31) of a run of 32 indices packed LSB-first in BITS little-endian 32-bit words
/// (a 32-index run is exactly BITS words: the word-aligned unpack of the tiled CUDA GEMV).
template <int BITS>
EDKM_HOST_DEVICE uint32_t lut_index_in_words(const uint32_t* words, int j) {
  const int bit = j * BITS, word = bit >> 5, off = bit & 31;
  uint32_t v = words[word] >> off;
  if (off + BITS > 32) v |= words[word + 1] << (32 - off);
  return v & ((1u << BITS) - 1u);
}

/// 4 * index j (0..31) of such a run: the index's byte offset in an fp32 LUT, which the tuned CUDA
/// GEMV (rows2) ORs into the LUT's shared-memory address (the LUT aligned to its size). An index
/// straddling two words is taken by one funnel shift.
template <int BITS>
EDKM_HOST_DEVICE uint32_t lut_index4_in_words(const uint32_t* words, int j) {
  constexpr uint32_t mask4 = ((1u << BITS) - 1u) << 2;
  const int bit = j * BITS, word = bit >> 5, off = bit & 31;
  if (off + BITS > 32) {  // off >= 25: bits off .. of words[word + 1]:words[word], shifted to bit 2
#if defined(__CUDA_ARCH__)
    return __funnelshift_r(words[word], words[word + 1], off - 2) & mask4;
#else
    const uint64_t pair = (static_cast<uint64_t>(words[word + 1]) << 32) | words[word];
    return static_cast<uint32_t>(pair >> (off - 2)) & mask4;
#endif
  }
  return (off >= 2 ? words[word] >> (off - 2) : words[word] << (2 - off)) & mask4;
}

/// W[r, c] without the scale.
EDKM_HOST_DEVICE float lut_weight(const LutParams& p, int64_t r, int64_t c) {
  const uint64_t bit = (static_cast<uint64_t>(r) * static_cast<uint64_t>(p.in) + static_cast<uint64_t>(c)) *
                       static_cast<uint64_t>(p.bits);
  return p.lut[(r / p.rows_per_lut) * p.lut_stride + lut_index_at(p.packed, bit, p.bits)];
}

/// y_m[r] = scale[r] * dot + bias[r]: how every backend finishes a row.
EDKM_HOST_DEVICE float lut_finish(const LutParams& p, int64_t r, float dot) {
  const float s = p.scale ? p.scale[r] * dot : dot;
  return p.bias ? s + p.bias[r] : s;
}

/// The CPU path of the LUT kernels.
/// kAvx512: AVX-512 F/BW/DQ; kAvx512Vbmi: with VBMI (byte permutes) as well.
enum class LutIsa : int32_t { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vbmi = 3 };

// CPU (kernels/cpu/lut_kernel.cpp). x: m x in, y: m x out, both contiguous fp32; m <= 4 for the
// GEMV. Rows [r0, r1) of the output.
void lut_gemv_rows_scalar(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1);
void lut_decode_rows_scalar(const LutParams& p, int64_t r0, int64_t r1, float* out);
#if defined(EDKM_LUT_SIMD)
void lut_gemv_rows_avx2(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1);
void lut_decode_rows_avx2(const LutParams& p, int64_t r0, int64_t r1, float* out);
void lut_gemv_rows_avx512(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1);
void lut_decode_rows_avx512(const LutParams& p, int64_t r0, int64_t r1, float* out);
void lut_gemv_rows_avx512_vbmi(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1);
#endif
/// The path taken (the best the CPU and build support, capped by EDKM_LUT_ISA=scalar|avx2|avx512).
LutIsa lut_isa();
/// The best path available; set_lut_isa caps the path of this process (tests, benchmarks).
LutIsa lut_isa_available();
void set_lut_isa(LutIsa isa);
/// Whole GEMV (m <= 4) over every row, multi-threaded; and rows [r0, r1) decoded (with the scale)
/// into out ((r1 - r0) x in), multi-threaded.
void lut_gemv_cpu(const LutParams& p, const float* x, int64_t m, float* y);
void lut_decode_cpu(const LutParams& p, int64_t r0, int64_t r1, float* out);

#if defined(EDKM_WITH_CUDA)
// CUDA (kernels/cuda/lut_kernel.cu); return a cudaError_t value (0 = success). The GEMV takes the
// rows kernel (2 rows per warp, each step's index words loaded ahead) when in % 32 == 0 and x fits
// in shared memory, else the warp-per-row kernel; EDKM_LUT_CUDA_KERNEL=rows|rows2|tiled|warp
// forces one where the shape allows (rows2: tuned, opt-in; tiled: the default before the H100 run).
int lut_gemv_cuda(const LutParams& p, const float* x, int64_t m, float* y, void* stream);
int lut_decode_cuda(const LutParams& p, int64_t r0, int64_t r1, float* out, void* stream);
#endif

}  // namespace edkm::kernels
EDKM_INTERNAL_END
