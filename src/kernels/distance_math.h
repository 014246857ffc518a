#pragma once
// The DKM distance, one definition for the soft assignment (streaming engine) and the hard
// assignment (nearest centroid), CPU and CUDA alike. The dense engine's tensor form
// (detail::distances in dkm/dense.cpp) computes the same values over whole tensors; tests hold
// them equal.
#include "kernels/host_device.h"

namespace edkm::kernels {

/// v * v rounded once, never fused into a following add by the compiler: nvcc contracts
/// `a * a - b` into an FMA, the host compiler (no FMA in the reference build) does not, and the
/// hard assignment's argmin must be the same on both (Palette.CudaAssignMatchesCpuTwin).
template <class S>
EDKM_HOST_DEVICE S exact_square(S v) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(S) == 4) {
    return __fmul_rn(v, v);
  } else {
    return __dmul_rn(v, v);
  }
#else
  return v * v;
#endif
}

/// The distance of a vector to centroid j given its squared Euclidean distance `squared`:
/// minus prune_threshold for centroid 0 (biases weights to it); under keep-sparsity (enforce_zero
/// with prune_threshold 0) a non-zero vector's (`blocked_row`) distance to centroid 0 is
/// `blocked` (1 / zero_threshold, or infinity), so it never picks centroid 0.
template <class S>
EDKM_HOST_DEVICE S dkm_distance(S squared, int j, double prune_threshold, bool blocked_row, double blocked) {
  if (j == 0) {
    if (blocked_row) return static_cast<S>(blocked);
    if (prune_threshold > 0) return squared - static_cast<S>(prune_threshold);  // squared: see exact_square
  }
  return squared;
}

}  // namespace edkm::kernels
