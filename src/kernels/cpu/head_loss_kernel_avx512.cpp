// The fused head-loss rows (head_loss_rows.h) built for AVX-512 (-mavx512f -mavx512dq -mfma); chosen at run time by
// head_loss_kernel.cpp.
#define EDKM_STREAM_ISA head_avx512
#include "kernels/cpu/head_loss_rows.h"

namespace edkm::kernels {
void head_loss_row_avx512(const HeadLossRows& p, int64_t row) { head_avx512::head_loss_row(p, row); }
}  // namespace edkm::kernels
