#include <ATen/TensorOperators.h>
#include <ATen/ops/_unique2.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>

#include "dkm/internal.h"
#include "edkm/dkm/palette.h"

namespace edkm {
namespace {
Palette describe(const at::Tensor& weight, const DKMOptions& options, const at::Tensor& scale) {
  Palette p;
  p.shape = weight.sizes().vec();
  p.dtype = weight.scalar_type();
  p.bits = options.bits();
  p.granularity = options.granularity();
  p.group_size = options.group_size();
  p.cluster_dim = options.cluster_dim();
  if (scale.defined()) p.scale = scale.detach().to(at::kFloat).reshape({-1, 1});
  return p;
}
}  // namespace

Palette Palette::from_centroids(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                                const at::Tensor& scale) {
  Palette p = describe(weight, options, scale);
  p.indices = functional::assign(weight, centroids, options, scale);
  p.lut = centroids.detach().to(weight.scalar_type()).contiguous();
  return p;
}

Palette Palette::from_clustered(const at::Tensor& weight, const DKMOptions& options, const at::Tensor& scale) {
  TORCH_CHECK(options.cluster_dim() == 1, "edkm: Palette::from_clustered supports cluster_dim == 1 only");
  const auto l = ClusterLayout::of(weight, options);
  detail::check_scale(scale, weight, l, options);
  Palette p = describe(weight, options, scale);
  const int64_t K = options.n_clusters();
  auto x = functional::to_vectors(weight.detach(), l, scale.defined() ? scale.to(weight.scalar_type()) : scale);
  std::vector<at::Tensor> luts, idx;
  for (int64_t g = 0; g < l.groups; ++g) {
    auto [vals, inverse, counts] = at::_unique2(x[g].reshape({-1}), /*sorted=*/true, /*return_inverse=*/true, false);
    TORCH_CHECK(vals.numel() <= K, "edkm: group ", g, " of the weight holds ", vals.numel(),
                " distinct values, more than the ", K, " of a ", options.bits(), "-bit palette: it is not finalized");
    if (vals.numel() < K) vals = at::cat({vals, at::full({K - vals.numel()}, vals[-1].item(), vals.options())});
    luts.push_back(vals.reshape({K, 1}));
    idx.push_back(inverse.reshape({-1}).to(at::kByte));
  }
  p.lut = at::stack(luts).contiguous();
  p.indices = at::stack(idx);
  return p;
}

int64_t Palette::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

DKMOptions Palette::options() const {
  return DKMOptions(bits)
      .granularity(granularity)
      .group_size(group_size)
      .cluster_dim(cluster_dim)
      .per_channel_scale(scale.defined());
}

at::Tensor Palette::decompress() const {
  TORCH_CHECK(lut.defined() && indices.defined(), "edkm: Palette is empty");
  TORCH_CHECK(lut.dim() == 3 && indices.dim() == 2 && lut.size(0) == indices.size(0) && lut.size(2) == cluster_dim,
              "edkm: Palette has inconsistent LUT ", lut.sizes(), " and indices ", indices.sizes(), " for cluster_dim ",
              cluster_dim);
  TORCH_CHECK(indices.numel() * cluster_dim == numel(), "edkm: Palette indices (", indices.numel(), " vectors of ",
              cluster_dim, ") do not cover the weight shape ", shape);
  ClusterLayout l;
  l.groups = lut.size(0);
  l.vectors = indices.size(1);
  l.cluster_dim = cluster_dim;
  l.rows = shape.at(0);
  auto idx = indices.to(at::kLong);
  TORCH_CHECK(idx.numel() == 0 || (idx.max().item<int64_t>() < lut.size(1)), "edkm: Palette index out of range of the ",
              lut.size(1), "-entry LUT");
  // G x n x d gather from G x K x d, in fp32 (exact for the 16-bit LUTs) or fp64 for an fp64 LUT:
  // lut[g, index] (times the row's fp32 scale) as the format defines it.
  const auto ct = lut.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto vec = lut.to(ct).gather(1, idx.to(lut.device()).unsqueeze(-1).expand({-1, -1, cluster_dim}));
  auto s = scale.defined() ? scale.to(lut.device()).to(ct) : scale;
  return functional::from_vectors(vec, shape, l, s).to(dtype);
}

}  // namespace edkm
