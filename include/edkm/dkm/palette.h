#pragma once
// A palettized weight: look-up tables plus one index per clustering vector.
#include <ATen/core/Tensor.h>

#include <vector>

#include "edkm/dkm/dkm.h"
#include "edkm/export.h"

namespace edkm {

/// LUT + indices of a clustered weight, and what is needed to rebuild it.
///
/// Example:
///   auto p = edkm::Palette::from_centroids(weight, centroids, edkm::DKMOptions(3));
///   at::Tensor w = p.decompress();  // every value is one of the 8 LUT entries
struct EDKM_API Palette {
  at::Tensor lut;              ///< G x K x cluster_dim, in the weight's dtype
  at::Tensor indices;          ///< G x n, uint8: the LUT entry of every vector
  at::Tensor scale;            ///< rows x 1 per-channel scale (fp32), undefined when not used
  std::vector<int64_t> shape;  ///< shape of the weight
  at::ScalarType dtype = at::kFloat;
  int64_t bits = 0;
  Granularity granularity = Granularity::kPerTensor;
  int64_t group_size = 0;
  int64_t cluster_dim = 1;

  /// Hard-assigns `weight` to `centroids` (G x K x d) under `options` (prune bias included).
  static Palette from_centroids(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                                const at::Tensor& scale = {});
  /// Extracts the palette of an already-finalized weight: every group must hold at most
  /// 2^bits distinct values (vectors); throws otherwise. cluster_dim == 1.
  static Palette from_clustered(const at::Tensor& weight, const DKMOptions& options, const at::Tensor& scale = {});

  /// The weight rebuilt from LUT and indices: shape `shape`, dtype `dtype`, on the LUT's device.
  at::Tensor decompress() const;
  /// Number of weights.
  int64_t numel() const;
  /// Options describing this palette's geometry (bits, granularity, group size, cluster_dim).
  DKMOptions options() const;
};

}  // namespace edkm
