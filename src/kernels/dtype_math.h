#pragma once
// Element types of the raw arrays the kernels read and write, and their conversions: one
// definition for every op and backend (CPU, CUDA). No ATen (dkm/internal.h maps at::ScalarType).
#include <cstdint>
#include <cstring>

#include "kernels/host_device.h"

namespace edkm::kernels {

/// Element type of a kernel's input / output array. The table kernels read kF32 weights through
/// their bf16 rounding (their pattern); every kernel computes in float (double for kF64).
enum class DType : int32_t { kF32 = 0, kF64 = 1, kBF16 = 2, kF16 = 3 };

/// The bits of `v` as a To of the same size (memcpy: a register move on host and device).
template <class To, class From>
EDKM_HOST_DEVICE To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}
EDKM_HOST_DEVICE uint32_t float_bits(float f) { return bit_cast<uint32_t>(f); }
EDKM_HOST_DEVICE float bits_float(uint32_t u) { return bit_cast<float>(u); }

/// bf16 pattern of an fp32 value, round to nearest even; every NaN gives 0x7FC0, as c10::BFloat16
/// (the rounding add would carry a NaN whose top mantissa bits are all ones into the exponent and
/// sign: 0x7FFFFFFF became -0, 0xFFFFFFFF +0).
EDKM_HOST_DEVICE uint16_t bf16_round_bits(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
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

/// Element i of an array of `dtype`, as S.
template <class S>
EDKM_HOST_DEVICE S load_value(const void* data, int64_t i, DType dtype) {
  switch (dtype) {
    case DType::kF64:
      return static_cast<S>(static_cast<const double*>(data)[i]);
    case DType::kBF16:
      return static_cast<S>(bf16_bits_to_float(static_cast<const uint16_t*>(data)[i]));
    case DType::kF16:
      return static_cast<S>(fp16_bits_to_float(static_cast<const uint16_t*>(data)[i]));
    default:
      return static_cast<S>(static_cast<const float*>(data)[i]);
  }
}

/// Writes v as element i of an array of `dtype` (16-bit types: round to nearest even).
template <class S>
EDKM_HOST_DEVICE void store_value(void* data, int64_t i, S v, DType dtype) {
  switch (dtype) {
    case DType::kF64:
      static_cast<double*>(data)[i] = static_cast<double>(v);
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(data)[i] = bf16_round_bits(static_cast<float>(v));
      break;
    case DType::kF16:
      static_cast<uint16_t*>(data)[i] = float_to_fp16_bits(static_cast<float>(v));
      break;
    default:
      static_cast<float*>(data)[i] = static_cast<float>(v);
  }
}

}  // namespace edkm::kernels
