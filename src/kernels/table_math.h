#pragma once
// Shared math of the table (uniquification) engine kernels: 16-bit bit patterns as table indices.
// One definition for the CPU and CUDA backends. No ATen: raw pointers and plain params.
//
// A weight's "pattern" is its 16-bit encoding: its own bits for bf16/fp16 weights, or, for fp32
// weights that opted in, the bits of its bf16 rounding (round to nearest even).
#include <cstdint>
#include <cstring>

#include "kernels/host_device.h"

namespace edkm::kernels {

constexpr int64_t kTableSize = 65536;

/// Element type of the weight / gradient arrays.
enum class WeightKind : int32_t { kBF16 = 0, kFP16 = 1, kFP32AsBF16 = 2 };

EDKM_HOST_DEVICE uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

EDKM_HOST_DEVICE float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

/// bf16 pattern of a finite fp32 value, round to nearest even.
EDKM_HOST_DEVICE uint16_t bf16_round_bits(float f) {
  const uint32_t u = float_bits(f);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

EDKM_HOST_DEVICE float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

/// IEEE half pattern -> float (normals, subnormals, inf/nan).
EDKM_HOST_DEVICE float fp16_bits_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0x1F) return bits_float(sign | 0x7F800000u | (man << 13));
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

/// float -> IEEE half pattern, round to nearest even (for writing fp16 outputs).
EDKM_HOST_DEVICE uint16_t float_to_fp16_bits(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // overflow -> inf
  if (abs < 0x38800000u) {                                               // subnormal or zero in half
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);           // < 2^-25 -> 0
    const uint32_t e = abs >> 23, m = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = ((abs - 0x38000000u) >> 13);
  const uint32_t rem = abs & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}

/// Pattern of element i of `data` (bf16/fp16 as uint16 words, or fp32).
EDKM_HOST_DEVICE uint16_t pattern_at(const void* data, int64_t i, WeightKind kind) {
  if (kind == WeightKind::kFP32AsBF16) return bf16_round_bits(static_cast<const float*>(data)[i]);
  return static_cast<const uint16_t*>(data)[i];
}

/// Element i of a weight-typed array as float.
EDKM_HOST_DEVICE float value_at(const void* data, int64_t i, WeightKind kind) {
  switch (kind) {
    case WeightKind::kBF16:
      return bf16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
    case WeightKind::kFP16:
      return fp16_bits_to_float(static_cast<const uint16_t*>(data)[i]);
    default:
      return static_cast<const float*>(data)[i];
  }
}

/// Writes `v` as element i of a weight-typed array.
EDKM_HOST_DEVICE void store_at(void* data, int64_t i, float v, WeightKind kind) {
  switch (kind) {
    case WeightKind::kBF16:
      static_cast<uint16_t*>(data)[i] = bf16_round_bits(v);
      break;
    case WeightKind::kFP16:
      static_cast<uint16_t*>(data)[i] = float_to_fp16_bits(v);
      break;
    default:
      static_cast<float*>(data)[i] = v;
  }
}

/// Parameters of the four table kernels. `weight`: N elements of `kind` (the patterns).
struct TableParams {
  const void* weight = nullptr;  // N, bf16/fp16 words or fp32
  int64_t n = 0;
  WeightKind kind = WeightKind::kBF16;
};

// counts[65536] (int64, zeroed by the kernel): weights per pattern.
void table_histogram_cpu(const TableParams& p, int64_t* counts);
// out[i] = table[pattern(w_i)], written in the weight's kind. table: 65536 floats.
void table_gather_cpu(const TableParams& p, const float* table, void* out);
// sums[65536] (double, zeroed by the kernel) += grad_i at pattern(w_i). grad: N of `kind`.
void table_scatter_add_cpu(const TableParams& p, const void* grad, double* sums);
// dw[i] = grad_i * slope[pattern] + shift[pattern], written in the weight's kind.
void table_backward_cpu(const TableParams& p, const void* grad, const float* slope, const float* shift, void* dw);

#if defined(EDKM_WITH_CUDA)
// CUDA twins on `stream` (a cudaStream_t); return a cudaError_t as int.
int table_histogram_cuda(const TableParams& p, int64_t* counts, void* stream);
int table_gather_cuda(const TableParams& p, const float* table, void* out, void* stream);
int table_scatter_add_cuda(const TableParams& p, const void* grad, double* sums, void* stream);
int table_backward_cuda(const TableParams& p, const void* grad, const float* slope, const float* shift, void* dw,
                        void* stream);
#endif

}  // namespace edkm::kernels
