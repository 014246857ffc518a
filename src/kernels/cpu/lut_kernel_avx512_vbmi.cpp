// LUT matmul rows for AVX-512 with VBMI (compiled with -mavx512f -mavx512bw -mavx512dq
// -mavx512vbmi -mfma): the rows of lut_rows_avx512.h with the byte permutes (Ice Lake, Zen 4 and
// later; lut_kernel.cpp checks the CPU).
#include "kernels/cpu/lut_rows_avx512.h"

#if !defined(__AVX512VBMI__)
#error "lut_kernel_avx512_vbmi.cpp needs -mavx512vbmi"
#endif

namespace edkm::kernels {

void lut_gemv_rows_avx512_vbmi(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  gemv_rows_avx512_build(p, x, m, y, r0, r1);
}

}  // namespace edkm::kernels
