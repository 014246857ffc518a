// Weight geometry: groups (one LUT each), clustering vectors, per-channel scale.
#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/amin.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <c10/util/Exception.h>

#include "edkm/dkm/dkm.h"

namespace edkm {

ClusterLayout ClusterLayout::of(const at::Tensor& weight, const DKMOptions& options) {
  options.validate();
  TORCH_CHECK(weight.defined(), "edkm: the weight tensor is undefined");
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()),
              "edkm: the weight must be a floating-point tensor (float32, float64, bfloat16, float16), got ",
              weight.scalar_type());
  TORCH_CHECK(weight.numel() > 0, "edkm: the weight tensor is empty (shape ", weight.sizes(), ")");
  TORCH_CHECK(weight.dim() >= 1, "edkm: the weight must have at least one dimension");
  // min and max propagate NaN, and an infinity is one of them: one reduction, no N-sized temporary.
  const auto [lo, hi] = at::aminmax(weight);
  TORCH_CHECK(at::isfinite(at::stack({lo, hi})).all().item<bool>(),
              "edkm: the weight contains NaN or Inf values; DKM needs finite weights");
  ClusterLayout l;
  l.rows = weight.size(0);
  l.cluster_dim = options.cluster_dim();
  int64_t rows_per_group = l.rows;
  if (options.granularity() == Granularity::kPerGroupedChannel) {
    TORCH_CHECK(l.rows % options.group_size() == 0, "edkm: group_size ", options.group_size(),
                " does not divide the weight's ", l.rows, " output rows (dim 0)");
    rows_per_group = options.group_size();
  }
  l.groups = l.rows / rows_per_group;
  const int64_t per_group = weight.numel() / l.groups;
  TORCH_CHECK(per_group % l.cluster_dim == 0, "edkm: cluster_dim ", l.cluster_dim, " does not divide the ", per_group,
              " elements of each group");
  l.vectors = per_group / l.cluster_dim;
  TORCH_CHECK(l.vectors >= 1, "edkm: no vector to cluster");
  return l;
}

namespace functional {

at::Tensor channel_scale(const at::Tensor& weight, ScaleScheme scheme) {
  TORCH_CHECK(weight.dim() >= 1 && weight.numel() > 0, "edkm: channel_scale needs a non-empty weight");
  auto rows =
      weight.detach().reshape({weight.size(0), -1}).to(weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor s =
      scheme == ScaleScheme::kMinMax ? 0.5 * (rows.amax({1}, true) - rows.amin({1}, true)) : rows.abs().amax({1}, true);
  return at::where(s > 0, s, at::ones_like(s));  // constant rows: scale 1, not a division by 0
}

// Vectors are `d` consecutive output channels at the same position (coremltools' vectorize):
// a group's rows [g, ...] are transposed (0, -1) and flattened before the reshape into n x d.
at::Tensor to_vectors(const at::Tensor& weight, const ClusterLayout& l, const at::Tensor& scale) {
  at::Tensor w = weight;
  if (scale.defined()) w = (w.reshape({l.rows, -1}) / scale.to(w.scalar_type())).reshape(weight.sizes());
  auto groups = w.reshape({l.groups, l.rows / l.groups, -1});
  if (l.cluster_dim > 1) {
    // per group: [g, M] viewed as the original trailing dims, transpose(0,-1), flatten
    std::vector<int64_t> s{l.groups};
    s.push_back(l.rows / l.groups);
    for (int64_t i = 1; i < weight.dim(); ++i) s.push_back(weight.size(i));
    auto t = w.reshape(s).transpose(1, -1);
    return t.reshape({l.groups, l.vectors, l.cluster_dim});
  }
  return groups.reshape({l.groups, l.vectors, 1});
}

at::Tensor from_vectors(const at::Tensor& vectors, at::IntArrayRef shape, const ClusterLayout& l,
                        const at::Tensor& scale) {
  at::Tensor w;
  if (l.cluster_dim > 1) {
    std::vector<int64_t> s{l.groups};
    s.push_back(l.rows / l.groups);
    for (size_t i = 1; i < shape.size(); ++i) s.push_back(shape[i]);
    std::vector<int64_t> st(s);
    std::swap(st[1], st.back());
    w = vectors.reshape(st).transpose(1, -1).reshape(shape);
  } else {
    w = vectors.reshape(shape);
  }
  if (scale.defined()) w = (w.reshape({l.rows, -1}) * scale.to(w.scalar_type())).reshape(shape);
  return w;
}

}  // namespace functional
}  // namespace edkm
