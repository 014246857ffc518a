#pragma once
// The DKM distance, one definition for the soft assignment (streaming engine) and the hard
// assignment (nearest centroid), CPU and CUDA alike. The dense engine's tensor form
// (detail::distances in dkm/dense.cpp) computes the same values over whole tensors; tests hold
// them equal.
#include "kernels/host_device.h"

namespace edkm::kernels {

/// The distance of a vector to centroid j given its squared Euclidean distance `squared`:
/// minus prune_threshold for centroid 0 (biases weights to it); under keep-sparsity (enforce_zero
/// with prune_threshold 0) a non-zero vector's (`blocked_row`) distance to centroid 0 is
/// `blocked` (1 / zero_threshold, or infinity), so it never picks centroid 0.
template <class S>
EDKM_HOST_DEVICE S dkm_distance(S squared, int j, double prune_threshold, bool blocked_row, double blocked) {
  if (j == 0) {
    if (blocked_row) return static_cast<S>(blocked);
    if (prune_threshold > 0) return squared - static_cast<S>(prune_threshold);
  }
  return squared;
}

}  // namespace edkm::kernels
