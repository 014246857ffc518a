#pragma once
// Internals shared by the DKM translation units (not installed).
#include <ATen/core/Tensor.h>

#include "edkm/dkm.h"

namespace edkm::detail {

/// fp64 stays fp64; everything else is clustered in fp32.
at::ScalarType compute_dtype(const at::Tensor& weight);
void check_centroids(const at::Tensor& centroids, const at::Tensor& weight, const ClusterLayout& l,
                     const DKMOptions& options);
void check_scale(const at::Tensor& scale, const at::Tensor& weight, const ClusterLayout& l, const DKMOptions& options);
/// Squared distances G x n x K of vectors x (G x n x d) to centroids c (G x K x d), with the
/// prune_threshold bias on centroid 0.
at::Tensor distances(const at::Tensor& x, const at::Tensor& c, const DKMOptions& options);

}  // namespace edkm::detail
