#include <ATen/Parallel.h>

#include "kernels/assign_math.h"

namespace edkm::kernels {

void assign_cpu(const AssignParams& p) {
  at::parallel_for(0, p.groups * p.n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      p.index[i] = nearest_centroid(p.weight[i], p.centroids + (i / p.n) * p.k, p.k, p.prune_threshold);
  });
}

}  // namespace edkm::kernels
