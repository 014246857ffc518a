#pragma once
// Internals shared by the DKM translation units (not installed).
#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <memory>
#include <string>

#include "edkm/dkm.h"

namespace edkm {
class Communicator;  // edkm/distributed.h
}  // namespace edkm

namespace edkm::detail {

/// Sharded clustering (src/distributed/sharded_dkm.cpp): sums `t` over the ranks of `comm` in
/// place; a no-op without a communicator (the single-process engines).
void shard_all_reduce(const std::shared_ptr<Communicator>& comm, at::Tensor& t);
/// The communicator kept in an autograd context for backward (an IValue capsule; none -> None).
c10::IValue comm_to_ivalue(const std::shared_ptr<Communicator>& comm);
std::shared_ptr<Communicator> comm_from_ivalue(const c10::IValue& v);

/// fp64 stays fp64; everything else is clustered in fp32.
at::ScalarType compute_dtype(const at::Tensor& weight);
void check_centroids(const at::Tensor& centroids, const at::Tensor& weight, const ClusterLayout& l,
                     const DKMOptions& options);
void check_scale(const at::Tensor& scale, const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options);
/// Squared distances G x n x K of vectors x (G x n x d) to centroids c (G x K x d), with the
/// prune_threshold bias on centroid 0.
at::Tensor distances(const at::Tensor& x, const at::Tensor& c, const DKMOptions& options);

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
/// requested engine cannot take this weight.
Engine resolve_engine(const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options);
/// Why the table / streaming engine cannot take this weight ("" when it can).
std::string table_unsupported(const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options);
std::string streaming_unsupported(const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options);
/// The table engine (table.cpp). With `comm`, `weight` is a row block of a weight sharded across
/// its ranks: the counts (forward) and the gradient table (backward) are all-reduced.
DKMOutput table_cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                        const std::shared_ptr<Communicator>& comm = nullptr);
/// The streaming engine (stream.cpp). With `comm`, `weight` is a row block of a weight sharded
/// across its ranks (per-tensor LUT): every reduction (forward and backward) is all-reduced.
DKMOutput stream_cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                         const at::Tensor& scale, const ClusterLayout& l,
                         const std::shared_ptr<Communicator>& comm = nullptr);

}  // namespace edkm::detail
