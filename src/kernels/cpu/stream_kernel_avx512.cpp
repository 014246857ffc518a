// The cluster_dim-1 fp32 streaming passes for AVX-512 (compiled with -mavx512f -mavx512dq
// -mfma; chosen at run time by stream_kernel.cpp). Exp: vec::exp16 (kernels/cpu/vec_exp.h, inline,
// 1 ulp); SLEEF's Sleef_expf16_u10avx512f only in stream_exp_avx512, the tests' reference.
#include <immintrin.h>
#include <sleef.h>

#include "kernels/cpu/vec_exp.h"

#define EDKM_STREAM_ISA avx512
#include "kernels/cpu/stream_block.h"
#include "kernels/cpu/stream_isa.h"

namespace edkm::kernels {
void stream_items_avx512(const StreamParams& p, StreamQueue& items, StreamSkip skip) {
  avx512::stream_items_block(p, items, skip);
}

void stream_exp_avx512(bool sleef, const float* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 x = _mm512_loadu_ps(in + i);
    _mm512_storeu_ps(out + i, sleef ? Sleef_expf16_u10avx512f(x) : vec::exp16(x));
  }
}
}  // namespace edkm::kernels
