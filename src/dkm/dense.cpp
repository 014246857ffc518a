// The dense DKM engine: plain autograd over G x n x K tensors. The ground truth of every other
// engine and the baseline of every memory figure (memory O(T * N * K)).
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <limits>
#include <optional>

#include "dkm/internal.h"
#include "edkm/dkm.h"

namespace edkm {
namespace detail {

at::ScalarType compute_dtype(const at::Tensor& weight) {
  return weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_centroids(const at::Tensor& centroids, const at::Tensor& weight, const ClusterLayout& l,
                     const DKMOptions& options) {
  TORCH_CHECK(centroids.defined(), "edkm: the centroids tensor is undefined");
  TORCH_CHECK(at::isFloatingType(centroids.scalar_type()), "edkm: centroids must be floating point, got ",
              centroids.scalar_type());
  TORCH_CHECK(centroids.dim() == 3 && centroids.size(0) == l.groups && centroids.size(1) == options.n_clusters() &&
                  centroids.size(2) == l.cluster_dim,
              "edkm: centroids must have shape [groups=", l.groups, ", K=", options.n_clusters(),
              ", cluster_dim=", l.cluster_dim, "], got ", centroids.sizes());
  TORCH_CHECK(centroids.device() == weight.device(), "edkm: centroids are on ", centroids.device(),
              " but the weight is on ", weight.device(), "; put them on the same device");
  TORCH_CHECK(at::isfinite(centroids).all().item<bool>(), "edkm: the centroids contain NaN or Inf");
}

void check_scale(const at::Tensor& scale, const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options) {
  if (options.per_channel_scale()) {
    TORCH_CHECK(scale.defined(), "edkm: per_channel_scale is set but no scale was given ",
                "(compute it with edkm::functional::channel_scale)");
  }
  if (!scale.defined()) return;
  TORCH_CHECK(scale.numel() == l.rows, "edkm: the scale must have one value per output row (", l.rows, "), got shape ",
              scale.sizes());
  TORCH_CHECK(scale.device() == weight.device(), "edkm: the scale is on ", scale.device(), " but the weight is on ",
              weight.device());
  TORCH_CHECK(at::isfinite(scale).all().item<bool>() && (scale != 0).all().item<bool>(),
              "edkm: the scale must be finite and non-zero");
}

at::Tensor distances(const at::Tensor& x, const at::Tensor& c, const DKMOptions& options) {
  // x: G x n x d, c: G x K x d -> G x n x K
  at::Tensor d = x.size(2) == 1 ? (x - c.transpose(1, 2)).square() : (x.unsqueeze(2) - c.unsqueeze(1)).square().sum(-1);
  if (options.prune_threshold() > 0) {
    auto shift = at::zeros({c.size(1)}, d.options());
    shift.select(0, 0).fill_(options.prune_threshold());
    d = d - shift;
  }
  return d;
}

}  // namespace detail

namespace functional {

DKMOutput dkm_cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                      const at::Tensor& scale) {
  const auto l = ClusterLayout::of(weight, options);
  detail::check_centroids(centroids, weight, l, options);
  detail::check_scale(scale, weight, l, options);
  TORCH_CHECK(options.engine() == Engine::kDense, "edkm: engine ", to_string(options.engine()),
              " is not available in this build");

  const auto ct = detail::compute_dtype(weight);
  const at::Tensor x = to_vectors(weight.to(ct), l, scale.defined() ? scale.to(ct) : scale);  // G x n x d
  at::Tensor c = centroids.detach().to(ct).clone();                                           // G x K x d
  const int64_t K = options.n_clusters();

  at::Tensor zero_mask;  // K x 1: 0 for centroid 0 when it is pinned to zero
  if (options.enforce_zero()) {
    zero_mask = at::ones({K, 1}, x.options().requires_grad(false));
    zero_mask.select(0, 0).fill_(0.0);
    c = c * zero_mask;
  }
  // prune_threshold == 0 with enforce_zero keeps the sparsity exact: only zero weights may pick
  // centroid 0 (coremltools' keep_sparsity).
  at::Tensor sparsity_block;  // G x n x K bool
  if (options.enforce_zero() && options.prune_threshold() == 0) {
    auto nonzero = (x.detach() != 0).any(-1, /*keepdim=*/true);  // G x n x 1
    auto col0 = at::zeros({K}, x.options().dtype(at::kBool));
    col0.select(0, 0).fill_(true);
    sparsity_block = nonzero.logical_and(col0);
  }
  const double blocked =
      options.zero_threshold() > 0 ? 1.0 / options.zero_threshold() : std::numeric_limits<double>::infinity();

  // Every group iterates on its own and stops on its own inertia test, as the reference's
  // sequential mode does per partition; a stopped group keeps its last attention and centroids.
  const int64_t G = l.groups;
  DKMOutput out;
  at::Tensor attention, inertia;
  at::Tensor done = at::zeros({G}, x.options().dtype(at::kBool));
  at::Tensor last = at::zeros({G}, x.options().requires_grad(false));  // 0 = no previous inertia
  for (int64_t t = 0; t < options.max_iter(); ++t) {
    at::Tensor d = detail::distances(x, c, options);  // G x n x K
    if (sparsity_block.defined()) d = at::where(sparsity_block, at::scalar_tensor(blocked, d.options()), d);
    at::Tensor a = at::softmax(-d / options.tau(), -1).clamp_min(options.zero_threshold());
    at::Tensor c_new = at::bmm(a.transpose(1, 2), x) / a.sum(1).unsqueeze(-1);  // G x K x d
    if (zero_mask.defined()) c_new = c_new * zero_mask;
    at::Tensor cur = std::get<0>(d.detach().min(-1)).sum(1);  // G
    if (t > 0 && G > 1 && done.any().item<bool>()) {
      auto keep = done.view({G, 1, 1});
      a = at::where(keep, attention, a);
      c_new = at::where(keep, c, c_new);
      cur = at::where(done, inertia, cur);
    }
    attention = a;
    c = c_new;
    inertia = cur;
    out.iterations = t + 1;
    // The reference's test: a previous non-zero inertia within epsilon of this one.
    done = done.logical_or(last.ne(0).logical_and((last - cur).abs() <= options.epsilon()));
    if (done.all().item<bool>()) break;
    last = cur;
  }
  out.inertia = inertia.sum().item<double>();
  out.weight = from_vectors(at::bmm(attention, c), weight.sizes(), l, scale.defined() ? scale.to(ct) : scale)
                   .to(weight.scalar_type());
  out.centroids = c.detach();
  return out;
}

}  // namespace functional
}  // namespace edkm
