// Run-time choice and threading of the fused head-loss rows (head_loss_kernel.h).
#include "kernels/cpu/head_loss_kernel.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

#include "kernels/cpu/env_choice.h"
#include "kernels/cpu/stream_isa.h"  // FlushDenormalResults

namespace edkm::kernels {
namespace {

// What this CPU and build have.
HeadLossIsa detect() {
#if defined(EDKM_HEAD_LOSS_SIMD)
  return static_cast<HeadLossIsa>(cpu_vector_level());
#else
  return HeadLossIsa::kNone;
#endif
}

std::atomic<int32_t>& chosen() {
  // capped by EDKM_HEAD_LOSS_ISA=none|avx2|avx512 (comparisons)
  static std::atomic<int32_t> isa{
      static_cast<int32_t>(capped_by_env(detect(), "EDKM_HEAD_LOSS_ISA", {"none", "avx2", "avx512"}))};
  return isa;
}

}  // namespace

HeadLossIsa head_loss_isa() { return static_cast<HeadLossIsa>(chosen().load()); }

void set_head_loss_isa(HeadLossIsa isa) { chosen().store(static_cast<int32_t>(std::min(isa, detect()))); }

std::string to_string(HeadLossIsa isa) {
  switch (isa) {
    case HeadLossIsa::kAvx2:
      return "avx2";
    case HeadLossIsa::kAvx512:
      return "avx512";
    default:
      return "none";
  }
}

bool head_loss_rows(const HeadLossRows& p) {
  const HeadLossIsa isa = head_loss_isa();
  if (isa == HeadLossIsa::kNone) return false;
#if defined(EDKM_HEAD_LOSS_SIMD)
  auto row = isa == HeadLossIsa::kAvx512 ? &head_loss_row_avx512 : &head_loss_row_avx2;
  at::parallel_for(0, p.rows, 1, [&](int64_t r0, int64_t r1) {
    // e^x below e^-87 comes out 0 from the vector exp; products of such tiny terms must not turn
    // denormal either (each would cost a microcode assist).
    const FlushDenormalResults ftz;
    for (int64_t r = r0; r < r1; ++r) row(p, r);
  });
  return true;
#else
  return false;
#endif
}

}  // namespace edkm::kernels
