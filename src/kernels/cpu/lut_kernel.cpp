// CPU LUT matmul kernels: the scalar reference rows, the run-time choice of the AVX2 / AVX-512
// rows (kernels/cpu/lut_kernel_avx2.cpp; lut_rows_avx512.h, built without and with VBMI by
// lut_kernel_avx512.cpp and lut_kernel_avx512_vbmi.cpp), and the multi-threaded drivers.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/env_choice.h"
#include "kernels/lut_math.h"

namespace edkm::kernels {

void lut_gemv_rows_scalar(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    float acc[4] = {0, 0, 0, 0};
    const float* lut = p.lut + (r / p.rows_per_lut) * p.lut_stride;
    uint64_t bit = static_cast<uint64_t>(r) * static_cast<uint64_t>(p.in) * static_cast<uint64_t>(p.bits);
    for (int64_t c = 0; c < p.in; ++c, bit += static_cast<uint64_t>(p.bits)) {
      const float w = lut[lut_index_at(p.packed, bit, p.bits)];
      for (int64_t j = 0; j < m; ++j) acc[j] += w * x[j * p.in + c];
    }
    for (int64_t j = 0; j < m; ++j) y[j * p.out + r] = lut_finish(p, r, acc[j]);
  }
}

void lut_decode_rows_scalar(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    const float s = p.scale ? p.scale[r] : 1.0f;
    float* o = out + (r - r0) * p.in;
    for (int64_t c = 0; c < p.in; ++c) o[c] = lut_weight(p, r, c) * s;
  }
}

namespace {
LutIsa detect() {
  LutIsa best = LutIsa::kScalar;
#if defined(EDKM_LUT_SIMD)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = LutIsa::kAvx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    best = LutIsa::kAvx512;
    if (__builtin_cpu_supports("avx512vbmi")) best = LutIsa::kAvx512Vbmi;
  }
#endif
  // avx512: without VBMI.
  return capped_by_env(best, "EDKM_LUT_ISA", {"scalar", "avx2", "avx512"});
}
}  // namespace

LutIsa lut_isa_available() {
  static const LutIsa available = detect();
  return available;
}

namespace {
std::atomic<int32_t>& chosen() {
  static std::atomic<int32_t> isa{static_cast<int32_t>(lut_isa_available())};
  return isa;
}
}  // namespace

LutIsa lut_isa() { return static_cast<LutIsa>(chosen().load()); }

void set_lut_isa(LutIsa isa) { chosen() = static_cast<int32_t>(std::min(isa, lut_isa_available())); }

void lut_gemv_cpu(const LutParams& p, const float* x, int64_t m, float* y) {
  const LutIsa isa = lut_isa();
  // Rows per task: enough work (>= ~32k weights) to be worth a thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, p.in));
  at::parallel_for(0, p.out, grain, [&](int64_t r0, int64_t r1) {
#if defined(EDKM_LUT_SIMD)
    if (isa == LutIsa::kAvx512Vbmi) return lut_gemv_rows_avx512_vbmi(p, x, m, y, r0, r1);
    if (isa == LutIsa::kAvx512) return lut_gemv_rows_avx512(p, x, m, y, r0, r1);
    if (isa == LutIsa::kAvx2) return lut_gemv_rows_avx2(p, x, m, y, r0, r1);
#endif
    (void)isa;
    lut_gemv_rows_scalar(p, x, m, y, r0, r1);
  });
}

void lut_decode_cpu(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  const LutIsa isa = lut_isa();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, p.in));
  at::parallel_for(r0, r1, grain, [&](int64_t b, int64_t e) {
    float* o = out + (b - r0) * p.in;
#if defined(EDKM_LUT_SIMD)
    if (isa >= LutIsa::kAvx512) return lut_decode_rows_avx512(p, b, e, o);
    if (isa == LutIsa::kAvx2) return lut_decode_rows_avx2(p, b, e, o);
#endif
    (void)isa;
    lut_decode_rows_scalar(p, b, e, o);
  });
}

}  // namespace edkm::kernels
