// LUT matmul rows for AVX-512 F/BW/DQ (compiled with -mavx512f -mavx512bw -mavx512dq -mfma): the
// rows of lut_rows_avx512.h without VBMI, for CPUs that lack it (Skylake-SP, Cascade Lake);
// lut_kernel_avx512_vbmi.cpp builds them with it.
#include "kernels/cpu/lut_rows_avx512.h"

#if defined(__AVX512VBMI__)
#error "lut_kernel_avx512.cpp is the build without VBMI"
#endif

namespace edkm::kernels {

void lut_gemv_rows_avx512(const LutParams& p, const float* x, int64_t m, float* y, int64_t r0, int64_t r1) {
  gemv_rows_avx512_build(p, x, m, y, r0, r1);
}

void lut_decode_rows_avx512(const LutParams& p, int64_t r0, int64_t r1, float* out) {
  lut_rows::decode<Avx512>(p, r0, r1, out);
}

}  // namespace edkm::kernels
