#pragma once
// Shared math of the nearest-centroid kernels: one definition for the CPU and CUDA backends.
#include <cstdint>

#include "kernels/distance_math.h"
#include "kernels/host_device.h"

namespace edkm::kernels {

/// Parameters of the 1-D nearest-centroid assignment; S is float (fp32/bf16/fp16 weights) or
/// double (fp64 weights), the dtype the soft assignment computes in.
template <class S>
struct AssignParams {
  const S* weight = nullptr;     // G*n, the clustering values (already divided by any scale)
  const S* centroids = nullptr;  // G x K
  uint8_t* index = nullptr;      // G*n out
  int64_t n = 0;                 // values per group
  int64_t groups = 0;            // G
  int32_t k = 0;                 // centroids per group (<= 256)
  double prune_threshold = 0;    // subtracted from the distance to centroid 0
  bool block_zero = false;       // keep-sparsity: non-zero values may not pick centroid 0
  double blocked = 0;            // their distance to centroid 0 (see dkm_distance)
};

/// argmin_j dkm_distance(w, c_j), first index on ties.
template <class S>
EDKM_HOST_DEVICE uint8_t nearest_centroid(const AssignParams<S>& p, S w, const S* c) {
  const bool blocked_row = p.block_zero && w != S(0);
  S best = dkm_distance<S>(exact_square<S>(w - c[0]), 0, p.prune_threshold, blocked_row, p.blocked);
  int32_t arg = 0;
  for (int32_t j = 1; j < p.k; ++j) {
    const S d = dkm_distance<S>(exact_square<S>(w - c[j]), j, p.prune_threshold, blocked_row, p.blocked);
    if (d < best) best = d, arg = j;
  }
  return static_cast<uint8_t>(arg);
}

void assign_cpu(const AssignParams<float>& p);
void assign_cpu(const AssignParams<double>& p);
#if defined(EDKM_WITH_CUDA)
/// Launches on `stream` (a cudaStream_t); errors surface through the return code.
int assign_cuda(const AssignParams<float>& p, void* stream);
int assign_cuda(const AssignParams<double>& p, void* stream);
#endif

}  // namespace edkm::kernels
