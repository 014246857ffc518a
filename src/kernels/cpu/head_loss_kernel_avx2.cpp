// The fused head-loss rows (head_loss_rows.h) built for AVX2 + FMA (-mavx2 -mfma); chosen at run time by
// head_loss_kernel.cpp.
#define EDKM_STREAM_ISA head_avx2
#include "kernels/cpu/head_loss_rows.h"

namespace edkm::kernels {
void head_loss_row_avx2(const HeadLossRows& p, int64_t row) { head_avx2::head_loss_row(p, row); }
}  // namespace edkm::kernels
