#pragma once
// Internals shared by the DKM translation units (not installed).
#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>

#include "edkm/dkm/dkm.h"
#include "edkm/export.h"
#include "kernels/dtype_math.h"

EDKM_INTERNAL_BEGIN
namespace edkm::detail {

/// Sums a tensor in place over the ranks that share a weight (the sharded engines pass one built
/// on their communicator, see src/distributed/); empty: a single process, nothing to sum. The
/// core never depends on the distributed code: it only calls this.
using Reducer = std::function<void(at::Tensor&)>;

/// What an engine's backward needs besides tensors: the options (kept whole, never copied field
/// by field) and the reducer. Stored in the autograd context as an IValue capsule.
struct EngineState : torch::CustomClassHolder {
  DKMOptions options;
  Reducer reduce;
  void sum(at::Tensor& t) const {
    if (reduce) reduce(t);
  }
};
c10::IValue engine_state(const DKMOptions& options, const Reducer& reduce);
const EngineState& engine_state(const c10::IValue& v);

/// The early-stopping rule of every engine (the reference's test): a previous non-zero inertia
/// within epsilon of this one. For doubles and for per-group tensors alike.
template <class T>
auto converged(const T& last, const T& current, double epsilon) {
  using std::abs;
  return (last != 0) & (abs(last - current) <= epsilon);
}

/// fp64 stays fp64; everything else is clustered in fp32.
at::ScalarType compute_dtype(const at::Tensor& weight);
void check_centroids(const at::Tensor& centroids, const at::Tensor& weight, const ClusterLayout& l,
                     const DKMOptions& options);
// scale_needs_flag: a defined scale requires options.per_channel_scale(). Set where the options
// pick an engine (dkm_cluster, sharded or not): the table engine takes no scale, so a scale the
// options do not announce would be applied by some engines and dropped by others. Elsewhere (init,
// hard assignment, palettes) every path applies a given scale.
void check_scale(const at::Tensor& scale, const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options,
                 bool scale_needs_flag = false);
/// DKM distances G x n x K of vectors x (G x n x d) to centroids c (G x K x d): squared
/// Euclidean, the prune_threshold bias on centroid 0, and the keep-sparsity `block` (from
/// sparsity_block; undefined: none). The tensor form of kernels::dkm_distance (soft and hard
/// assignment use these two and nothing else).
at::Tensor distances(const at::Tensor& x, const at::Tensor& c, const DKMOptions& options, const at::Tensor& block);

/// keep_sparsity mask (G x n x K bool): non-zero vectors may not pick centroid 0. Undefined
/// unless enforce_zero with prune_threshold == 0.
at::Tensor sparsity_block(const at::Tensor& x, const DKMOptions& options);
/// A = max(softmax(-D / tau), zero_threshold) with D from `distances` and the sparsity block;
/// D is returned through `distances_out` when given.
at::Tensor attention(const at::Tensor& x, const at::Tensor& c, const DKMOptions& options, const at::Tensor& block,
                     at::Tensor* distances_out = nullptr);

/// The DKM iterations of DESIGN.md §1 on vectors x (G x n x d) from centroids c (G x K x d).
/// `mass` (G x n x 1, optional) weights every vector: the table engine's counts.
struct Iterations {
  at::Tensor attention;            ///< G x n x K of the last iteration
  at::Tensor attention_centroids;  ///< G x K x d the last attention was computed from
  at::Tensor centroids;            ///< G x K x d after the last update
  at::Tensor inertia;              ///< G, of the last iteration
  int64_t iterations = 0;
};
Iterations run_iterations(const at::Tensor& x, at::Tensor c, const DKMOptions& options, const at::Tensor& mass);

/// The engine that computes `weight` under `options` (kAuto resolved); throws when the
/// requested engine cannot take this weight. When kAuto falls back to the dense engine,
/// `fallback_reason` (optional) receives why neither the table nor the streaming engine could.
Engine resolve_engine(const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options,
                      std::string* fallback_reason = nullptr);
/// Why the table / streaming engine cannot take this weight ("" when it can).
std::string table_unsupported(const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options);
std::string streaming_unsupported(const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options);

/// Checks a weight, its centroids and scale against the options; returns the layout. What
/// functional::dkm_cluster runs on every call and modules run once per set-up.
ClusterLayout check_inputs(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                           const at::Tensor& scale, bool scale_needs_flag = false);

/// The one entry to the engines, without checks (see check_inputs): `engine` resolved (not
/// kAuto). With `reduce`, `weight` is a row block of a weight sharded across ranks: the table
/// and streaming engines sum their reductions through it (the dense engine refuses).
DKMOutput cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                  const at::Tensor& scale, const ClusterLayout& l, Engine engine, const Reducer& reduce = {});

/// The engines (dense.cpp, table.cpp, stream.cpp), reached through cluster().
DKMOutput dense_cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                        const at::Tensor& scale, const ClusterLayout& l);
DKMOutput table_cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                        const Reducer& reduce);
DKMOutput stream_cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                         const at::Tensor& scale, const ClusterLayout& l, const Reducer& reduce);

}  // namespace edkm::detail
EDKM_INTERNAL_END
