#include <ATen/Parallel.h>

#include "kernels/assign_math.h"

namespace edkm::kernels {
namespace {

template <class S>
void assign_all(const AssignParams<S>& p) {
  at::parallel_for(0, p.groups * p.n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) p.index[i] = nearest_centroid(p, p.weight[i], p.centroids + (i / p.n) * p.k);
  });
}

}  // namespace

void assign_cpu(const AssignParams<float>& p) { assign_all(p); }
void assign_cpu(const AssignParams<double>& p) { assign_all(p); }

}  // namespace edkm::kernels
