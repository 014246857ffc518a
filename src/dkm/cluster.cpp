// The one entry to the DKM engines: checks (once per call of the functional form, once per
// set-up in modules), the engine choice, and the dispatch to dense.cpp / table.cpp / stream.cpp.
#include <ATen/TensorOperators.h>
#include <ATen/ops/isfinite.h>
#include <c10/util/Exception.h>

#include "dkm/internal.h"
#include "edkm/dkm/dkm.h"

namespace edkm {
namespace detail {

c10::IValue engine_state(const DKMOptions& options, const Reducer& reduce) {
  auto s = c10::make_intrusive<EngineState>();
  s->options = options;
  s->reduce = reduce;
  return c10::IValue::make_capsule(std::move(s));
}

const EngineState& engine_state(const c10::IValue& v) {
  TORCH_INTERNAL_ASSERT(v.isCapsule(), "edkm: engine state missing from the autograd context");
  return *static_cast<const EngineState*>(v.toCapsule().get());
}

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

void check_scale(const at::Tensor& scale, const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options,
                 bool scale_needs_flag) {
  if (options.per_channel_scale()) {
    TORCH_CHECK(scale.defined(), "edkm: per_channel_scale is set but no scale was given ",
                "(compute it with edkm::functional::channel_scale)");
  }
  if (!scale.defined()) return;
  TORCH_CHECK(!scale_needs_flag || options.per_channel_scale(),
              "edkm: a scale was given but per_channel_scale is not set: set DKMOptions::per_channel_scale(true) "
              "to cluster the scaled weight, or pass no scale");
  TORCH_CHECK(scale.numel() == l.rows, "edkm: the scale must have one value per output row (", l.rows, "), got shape ",
              scale.sizes());
  TORCH_CHECK(scale.device() == weight.device(), "edkm: the scale is on ", scale.device(), " but the weight is on ",
              weight.device());
  TORCH_CHECK(at::isfinite(scale).all().item<bool>() && (scale != 0).all().item<bool>(),
              "edkm: the scale must be finite and non-zero");
}

ClusterLayout check_inputs(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                           const at::Tensor& scale, bool scale_needs_flag) {
  const auto l = ClusterLayout::of(weight, options);
  check_centroids(centroids, weight, l, options);
  check_scale(scale, weight, l, options, scale_needs_flag);
  return l;
}

Engine resolve_engine(const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options,
                      std::string* fallback_reason) {
  switch (options.engine()) {
    case Engine::kDense:
      return Engine::kDense;
    case Engine::kTable: {
      const std::string why = table_unsupported(weight, l, options);
      TORCH_CHECK(why.empty(), "edkm: the table engine cannot cluster this weight: ", why);
      return Engine::kTable;
    }
    case Engine::kStreaming: {
      const std::string why = streaming_unsupported(weight, l, options);
      TORCH_CHECK(why.empty(), "edkm: the streaming engine cannot cluster this weight: ", why);
      return Engine::kStreaming;
    }
    case Engine::kAuto:
      break;
  }
  const std::string no_table = table_unsupported(weight, l, options);
  if (no_table.empty()) return Engine::kTable;
  const std::string no_stream = streaming_unsupported(weight, l, options);
  if (no_stream.empty()) return Engine::kStreaming;
  if (fallback_reason) *fallback_reason = "table: " + no_table + "; streaming: " + no_stream;
  return Engine::kDense;
}

DKMOutput cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                  const at::Tensor& scale, const ClusterLayout& l, Engine engine, const Reducer& reduce) {
  switch (engine) {
    case Engine::kTable:
      return table_cluster(weight, centroids, options, reduce);
    case Engine::kStreaming:
      return stream_cluster(weight, centroids, options, scale, l, reduce);
    case Engine::kDense:
      TORCH_CHECK(!reduce,
                  "edkm: the dense engine is not sharded by rows (use dist::ShardedOffloader around "
                  "functional::dkm_cluster for eDKM's dense sharding)");
      return dense_cluster(weight, centroids, options, scale, l);
    case Engine::kAuto:
      break;
  }
  TORCH_CHECK(false, "edkm: internal: cluster() needs a resolved engine");
}

}  // namespace detail

namespace functional {

DKMOutput dkm_cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                      const at::Tensor& scale) {
  const auto l = detail::check_inputs(weight, centroids, options, scale, /*scale_needs_flag=*/true);
  return detail::cluster(weight, centroids, options, scale, l, detail::resolve_engine(weight, l, options));
}

}  // namespace functional
}  // namespace edkm
