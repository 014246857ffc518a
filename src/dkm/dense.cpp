// The dense DKM engine: plain autograd over G x n x K tensors. The ground truth of every other
// engine and the baseline of every memory figure (memory O(T * N * K)).
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <limits>
#include <vector>

#include "dkm/internal.h"
#include "edkm/dkm/dkm.h"

namespace edkm::detail {

at::Tensor distances(const at::Tensor& x, const at::Tensor& c, const DKMOptions& options, const at::Tensor& block) {
  // x: G x n x d, c: G x K x d -> G x n x K; the tensor form of kernels::dkm_distance.
  at::Tensor d = x.size(2) == 1 ? (x - c.transpose(1, 2)).square() : (x.unsqueeze(2) - c.unsqueeze(1)).square().sum(-1);
  if (options.prune_threshold() > 0) {
    auto shift = at::zeros({c.size(1)}, d.options());
    shift.select(0, 0).fill_(options.prune_threshold());
    d = d - shift;
  }
  if (block.defined()) {
    const double blocked =
        options.zero_threshold() > 0 ? 1.0 / options.zero_threshold() : std::numeric_limits<double>::infinity();
    d = at::where(block, at::scalar_tensor(blocked, d.options()), d);
  }
  return d;
}

at::Tensor sparsity_block(const at::Tensor& x, const DKMOptions& options) {
  // prune_threshold == 0 with enforce_zero keeps the sparsity exact: only zero weights may pick
  // centroid 0 (coremltools' keep_sparsity).
  if (!(options.enforce_zero() && options.prune_threshold() == 0)) return {};
  auto nonzero = (x.detach() != 0).any(-1, /*keepdim=*/true);  // G x n x 1
  auto col0 = at::zeros({options.n_clusters()}, x.options().dtype(at::kBool));
  col0.select(0, 0).fill_(true);
  return nonzero.logical_and(col0);
}

at::Tensor attention(const at::Tensor& x, const at::Tensor& c, const DKMOptions& options, const at::Tensor& block,
                     at::Tensor* distances_out) {
  at::Tensor d = distances(x, c, options, block);  // G x n x K
  if (distances_out) *distances_out = d;
  return at::softmax(-d / options.tau(), -1).clamp_min(options.zero_threshold());
}

namespace {
// sum_n a[g, n, k] x[g, n, j] (G x n x K, G x n x d -> G x K x d) as products reduced by ATen's sum,
// which adds in a tree (fp32 error ~1e-7 relative at any n), not by bmm: MKL's sgemm accumulates
// the n terms in a running fp32 sum, whose error grows with n. Measured against fp64 on N(0, 0.02^2)
// weights, 3 bits, per tensor: 2.4e-5 relative at 65,536 weights, 2.2e-4 at 262,144, 8.3e-3 at
// 16.8M (a 4096 x 4096 LUT); coremltools' DKMPalettizer, a matmul too, carries the same error.
// Memory: the product is one transient G x n x K tensor per column j, and autograd saves only a
// and x, which it holds anyway.
at::Tensor centroid_sums(const at::Tensor& a, const at::Tensor& x) {
  if (x.size(2) == 1) return (a * x).sum(1).unsqueeze(-1);
  std::vector<at::Tensor> cols;
  for (int64_t j = 0; j < x.size(2); ++j) cols.push_back((a * x.narrow(2, j, 1)).sum(1));
  return at::stack(cols, -1);
}
}  // namespace

Iterations run_iterations(const at::Tensor& x, at::Tensor c, const DKMOptions& options, const at::Tensor& mass) {
  const int64_t G = x.size(0), K = options.n_clusters();
  at::Tensor zero_mask;  // K x 1: 0 for centroid 0 when it is pinned to zero
  if (options.enforce_zero()) {
    zero_mask = at::ones({K, 1}, x.options().requires_grad(false));
    zero_mask.select(0, 0).fill_(0.0);
    c = c * zero_mask;
  }
  const at::Tensor block = sparsity_block(x, options);
  const at::Tensor xm = mass.defined() ? x * mass : x;
  // Every group iterates on its own and stops on its own inertia test, as the reference's
  // sequential mode does per partition; a stopped group keeps its last attention and centroids.
  Iterations it;
  at::Tensor done = at::zeros({G}, x.options().dtype(at::kBool));
  at::Tensor last = at::zeros({G}, x.options().requires_grad(false));  // 0 = no previous inertia
  for (int64_t t = 0; t < options.max_iter(); ++t) {
    at::Tensor d;
    at::Tensor a = attention(x, c, options, block, &d);
    at::Tensor am = mass.defined() ? a * mass : a;
    at::Tensor c_new = centroid_sums(a, xm) / am.sum(1).unsqueeze(-1);  // G x K x d
    if (zero_mask.defined()) c_new = c_new * zero_mask;
    at::Tensor dmin = std::get<0>(d.detach().min(-1));                                   // G x n
    at::Tensor cur = (mass.defined() ? dmin * mass.detach().squeeze(-1) : dmin).sum(1);  // G
    at::Tensor c_in = c;
    if (t > 0 && G > 1 && done.any().item<bool>()) {
      auto keep = done.view({G, 1, 1});
      a = at::where(keep, it.attention, a);
      c_in = at::where(keep, it.attention_centroids, c_in);
      c_new = at::where(keep, it.centroids, c_new);
      cur = at::where(done, it.inertia, cur);
    }
    it.attention = a;
    it.attention_centroids = c_in;
    it.centroids = c_new;
    c = c_new;
    it.inertia = cur;
    it.iterations = t + 1;
    done = done.logical_or(converged(last, cur, options.epsilon()));
    if (done.all().item<bool>()) break;
    last = cur;
  }
  return it;
}

DKMOutput dense_cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                        const at::Tensor& scale, const ClusterLayout& l) {
  const auto ct = compute_dtype(weight);
  const at::Tensor s = scale.defined() ? scale.to(ct) : scale;
  const at::Tensor x = functional::to_vectors(weight.to(ct), l, s);  // G x n x d
  auto it = run_iterations(x, centroids.detach().to(ct).clone(), options, {});
  DKMOutput out;
  out.weight =
      functional::from_vectors(at::bmm(it.attention, it.centroids), weight.sizes(), l, s).to(weight.scalar_type());
  out.centroids = it.centroids.detach();
  out.iterations = it.iterations;
  out.inertia = it.inertia.sum().item<double>();
  return out;
}

}  // namespace edkm::detail
