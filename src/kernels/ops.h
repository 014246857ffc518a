#pragma once
// Tensor-level entries of edkm's kernels, one per op (the layout of torchvision's csrc/ops): each
// entry checks its arguments (naming the argument), enters the tensor's device (device guard),
// takes that device's current stream, returns early when there is nothing to do, dispatches on
// the device (and dtype) to its cpu/ or cuda/ twin, and checks the launch. The engines call these
// and never branch on the device; the shared math is in the *_math.h headers, once.
//
// Internal (src/): the engines, PalettizedLinear and the backend test harness use it.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "edkm/export.h"
#include "kernels/assign_math.h"
#include "kernels/lut_math.h"
#include "kernels/stream_math.h"
#include "kernels/table_math.h"

EDKM_INTERNAL_BEGIN
namespace edkm::kernels::ops {

/// The kernels' element type of a tensor's dtype (the one at::ScalarType -> DType mapping; float
/// for anything that is not double, bf16 or fp16).
inline DType kernel_dtype(at::ScalarType st) {
  switch (st) {
    case at::kDouble:
      return DType::kF64;
    case at::kBFloat16:
      return DType::kBF16;
    case at::kHalf:
      return DType::kF16;
    default:
      return DType::kF32;
  }
}

/// Whether this build has the CUDA twins (EDKM_CUDA and nvcc at configure time).
bool cuda_kernels_built();
/// Why a tensor on its device cannot run edkm's kernels ("" when it can).
std::string unsupported_device(const at::Tensor& t);

// --- table engine (kernels/table_math.h): w is contiguous bf16 / fp16, or fp32 read as bf16 ----
/// counts[65,536] int64: weights per 16-bit pattern.
at::Tensor table_histogram(const at::Tensor& w);
/// out[i] = table[pattern(w_i)] in w's dtype; table: 65,536 fp32 on w's device.
at::Tensor table_gather(const at::Tensor& w, const at::Tensor& table);
/// sums[65,536] fp64: the gradient summed per pattern; grad: w's shape and dtype.
at::Tensor table_scatter_add(const at::Tensor& w, const at::Tensor& grad);
/// dw[i] = grad_i * slope[pattern] + shift[pattern] in w's dtype.
at::Tensor table_backward(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& slope,
                          const at::Tensor& shift);

// --- streaming engine (kernels/stream_math.h) -----------------------------------------------
/// One pass of `p` (pointers into tensors on `on`'s device; partials zeroed by the caller).
void stream_pass(const StreamParams& p, const at::Tensor& on);

// --- hard assignment (kernels/assign_math.h) ------------------------------------------------
/// p's pointers are into `on`'s device; S = float or double as the values' dtype.
void assign(const AssignParams<float>& p, const at::Tensor& on);
void assign(const AssignParams<double>& p, const at::Tensor& on);

// --- LUT matmul (kernels/lut_math.h) --------------------------------------------------------
/// y (m x out fp32) = x (m x in fp32, contiguous, m <= 4) W^T (+ bias) for the packed W of p.
void lut_gemv(const LutParams& p, const at::Tensor& x, const at::Tensor& y);
/// Rows [r0, r1) of W (with the scale) into out ((r1 - r0) x in fp32, contiguous).
void lut_decode(const LutParams& p, int64_t r0, int64_t r1, const at::Tensor& out);

}  // namespace edkm::kernels::ops
EDKM_INTERNAL_END
