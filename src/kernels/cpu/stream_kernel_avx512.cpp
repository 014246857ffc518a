// The cluster_dim-1 fp32 streaming passes for AVX-512 (compiled with -mavx512f -mavx512dq
// -mfma; chosen at run time by stream_kernel.cpp). Exp: SLEEF's Sleef_expf16_u10avx512f (1.0 ulp).
#include <immintrin.h>
#include <sleef.h>

#define EDKM_STREAM_ISA avx512
#define EDKM_STREAM_EXP_BLOCK(v) _mm512_storeu_ps((v), Sleef_expf16_u10avx512f(_mm512_loadu_ps(v)))
#include "kernels/cpu/stream_block.h"
#include "kernels/cpu/stream_isa.h"

namespace edkm::kernels {
void stream_items_avx512(const StreamParams& p, int64_t begin, int64_t end, StreamSkip skip) {
  avx512::stream_items_block(p, begin, end, skip);
}
}  // namespace edkm::kernels
