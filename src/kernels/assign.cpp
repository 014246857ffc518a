// Host entry of the hard assignment: parameters from the tensors, then the op (kernels/ops.h:
// device guard -> stream -> dispatch).
// The distance is the soft assignment's (kernels/distance_math.h; detail::distances for
// vectors), prune bias and keep-sparsity included, in the dtype the soft assignment computes in.
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <limits>

#include "dkm/internal.h"
#include "kernels/ops.h"

namespace edkm {
namespace {

template <class S>
void assign_values(const at::Tensor& x, const at::Tensor& c, const DKMOptions& options, const ClusterLayout& l,
                   at::Tensor& out) {
  kernels::AssignParams<S> p;
  p.weight = x.data_ptr<S>();
  p.centroids = c.data_ptr<S>();
  p.index = out.data_ptr<uint8_t>();
  p.n = l.vectors;
  p.groups = l.groups;
  p.k = static_cast<int32_t>(options.n_clusters());
  p.prune_threshold = options.prune_threshold();
  p.block_zero = options.enforce_zero() && options.prune_threshold() == 0;
  p.blocked = options.zero_threshold() > 0 ? 1.0 / options.zero_threshold() : std::numeric_limits<double>::infinity();
  kernels::ops::assign(p, x);
}

}  // namespace

namespace functional {

at::Tensor assign(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                  const at::Tensor& scale) {
  const auto l = detail::check_inputs(weight, centroids, options, scale);
  auto out = at::empty({l.groups, l.vectors}, weight.options().dtype(at::kByte));
  if (l.cluster_dim > 1) {  // vectors: per group, the soft assignment's distances (prune bias, keep-sparsity)
    auto x = to_vectors(weight.detach().to(at::kDouble), l, scale.defined() ? scale.to(at::kDouble) : scale);
    auto c = centroids.detach().to(at::kDouble);
    for (int64_t g = 0; g < l.groups; ++g) {
      auto xg = x[g].unsqueeze(0);
      auto d = detail::distances(xg, c[g].unsqueeze(0), options, detail::sparsity_block(xg, options))[0];
      out[g].copy_(d.argmin(1));
    }
    return out;
  }
  const auto ct = detail::compute_dtype(weight);
  auto x = to_vectors(weight.detach().to(ct), l, scale.defined() ? scale.to(ct) : scale).contiguous();
  auto c = centroids.detach().to(ct).contiguous();
  if (ct == at::kDouble) {
    assign_values<double>(x, c, options, l, out);
  } else {
    assign_values<float>(x, c, options, l, out);
  }
  return out;
}

}  // namespace functional
}  // namespace edkm
