#pragma once
// Shared math of the nearest-centroid kernels: one definition for the CPU and CUDA backends.
#include <cstdint>

#include "kernels/host_device.h"

namespace edkm::kernels {

/// Parameters of the 1-D nearest-centroid assignment.
struct AssignParams {
  const float* weight = nullptr;     // G*n, the clustering values (already divided by any scale)
  const float* centroids = nullptr;  // G x K
  uint8_t* index = nullptr;          // G*n out
  int64_t n = 0;                     // values per group
  int64_t groups = 0;                // G
  int32_t k = 0;                     // centroids per group (<= 256)
  float prune_threshold = 0;         // subtracted from the distance to centroid 0
};

/// argmin_j (w - c_j)^2 - [j == 0] * prune, first index on ties.
EDKM_HOST_DEVICE uint8_t nearest_centroid(float w, const float* c, int32_t k, float prune) {
  float best = (w - c[0]) * (w - c[0]) - prune;
  int32_t arg = 0;
  for (int32_t j = 1; j < k; ++j) {
    const float d = (w - c[j]) * (w - c[j]);
    if (d < best) best = d, arg = j;
  }
  return static_cast<uint8_t>(arg);
}

void assign_cpu(const AssignParams& p);
#if defined(EDKM_WITH_CUDA)
/// Launches on `stream` (a cudaStream_t); errors surface through the return code.
int assign_cuda(const AssignParams& p, void* stream);
#endif

}  // namespace edkm::kernels
