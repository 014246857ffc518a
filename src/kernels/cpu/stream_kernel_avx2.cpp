// The cluster_dim-1 fp32 streaming passes for AVX2 + FMA (compiled with -mavx2 -mfma; chosen at
// run time by stream_kernel.cpp). Exp: vec::exp8 (kernels/cpu/vec_exp.h, inline, 1 ulp); SLEEF's
// Sleef_expf8_u10avx2 only in stream_exp_avx2, the tests' reference.
#include <immintrin.h>
#include <sleef.h>

#include "kernels/cpu/vec_exp.h"

#define EDKM_STREAM_ISA avx2
#include "kernels/cpu/stream_block.h"
#include "kernels/cpu/stream_isa.h"

namespace edkm::kernels {
void stream_items_avx2(const StreamParams& p, StreamQueue& items, StreamSkip skip) {
  avx2::stream_items_block(p, items, skip);
}

void stream_exp_avx2(bool sleef, const float* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 x = _mm256_loadu_ps(in + i);
    _mm256_storeu_ps(out + i, sleef ? Sleef_expf8_u10avx2(x) : vec::exp8(x));
  }
}
}  // namespace edkm::kernels
