// The cluster_dim-1 fp32 streaming passes for AVX2 + FMA (compiled with -mavx2 -mfma; chosen at
// run time by stream_kernel.cpp). Exp: SLEEF's Sleef_expf8_u10avx2 (1.0 ulp).
#include <immintrin.h>
#include <sleef.h>

#define EDKM_STREAM_ISA avx2
#define EDKM_STREAM_EXP_BLOCK(v)                                              \
  do {                                                                        \
    _mm256_storeu_ps((v), Sleef_expf8_u10avx2(_mm256_loadu_ps(v)));           \
    _mm256_storeu_ps((v) + 8, Sleef_expf8_u10avx2(_mm256_loadu_ps((v) + 8))); \
  } while (0)
#include "kernels/cpu/stream_block.h"
#include "kernels/cpu/stream_isa.h"

namespace edkm::kernels {
void stream_items_avx2(const StreamParams& p, int64_t begin, int64_t end, StreamSkip skip) {
  avx2::stream_items_block(p, begin, end, skip);
}
}  // namespace edkm::kernels
