#pragma once
// Differentiable k-means (DKM) weight clustering: options and the functional forms.
//
// One forward of a clustered weight (DESIGN.md §1), K = 2^bits centroids, temperature tau:
//   C^0 = centroids kept from the previous step (detached)
//   repeat t < max_iter:  D_ij = |w_i - c_j|^2 (minus prune_threshold for j = 0)
//                         A_ij = max(softmax_j(-D_ij / tau), zero_threshold)
//                         c_j  = sum_i A_ij w_i / sum_i A_ij
//                         stop when |inertia_t - inertia_{t-1}| <= epsilon
//   W_soft = A_last @ C_last (differentiable through every iteration)
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <string>

#include "edkm/export.h"

namespace edkm {

/// How many look-up tables a weight gets.
enum class Granularity : uint8_t {
  kPerTensor,          ///< one LUT for the whole tensor
  kPerGroupedChannel,  ///< one LUT per `group_size` output rows (dim 0)
};

/// How the per-channel scale of `per_channel_scale` is computed, per output row.
enum class ScaleScheme : uint8_t {
  kMinMax,  ///< (max - min) / 2
  kAbs,     ///< max |w|
};

/// Centroid initialisation on the first step.
enum class KMeansInit : uint8_t {
  kAuto,            ///< cluster_dim == 1: kOptimal1D when the distinct values fit `opt1d_max_unique`,
                    ///< else the exact DP over that many runs of consecutive values refined by 1-D
                    ///< Lloyd (kmeans::binned_1d); cluster_dim > 1: kKMeansPlusPlus
  kKMeansPlusPlus,  ///< weighted k-means++ seeding, then weighted Lloyd iterations
  kOptimal1D,       ///< exact 1-D optimal k-means over the value histogram (cluster_dim == 1)
};

/// Which implementation computes the clustering. All compute the same values and gradients.
enum class Engine : uint8_t {
  kDense,      ///< plain autograd over N x K tensors: the reference; memory O(T * N * K)
  kTable,      ///< uniquification over the 65,536 bit patterns of 16-bit weights (per-tensor LUT,
               ///< cluster_dim 1, no per-channel scale); memory O(N) + O(T * 65536 * K)
  kStreaming,  ///< fused passes over the weights, backward recomputes the attention from the saved
               ///< centroids: any dtype, granularity and scale, cluster_dim <= 16; memory O(N) + O(T * K * G)
  kAuto,       ///< kTable when the weight qualifies, else kStreaming, else kDense
};

EDKM_API std::string to_string(Granularity g);
EDKM_API std::string to_string(ScaleScheme s);
EDKM_API std::string to_string(KMeansInit i);
EDKM_API std::string to_string(Engine e);
/// Inverse of to_string(Engine): "dense", "table", "streaming", "auto"; throws c10::Error otherwise.
EDKM_API Engine engine_from_string(const std::string& name);

/// Options of DKM clustering. Defaults equal coremltools' DKMPalettizer.
///
/// Example:
///   auto opts = edkm::DKMOptions(3).granularity(edkm::Granularity::kPerGroupedChannel)
///                   .group_size(128).tau(1e-4);
struct EDKM_API DKMOptions {
  /* implicit */ DKMOptions(int64_t bits = 4) : bits_(bits) {}

  /// Bits per weight: K = 2^bits centroids, 1..8. Default 4.
  TORCH_ARG(int64_t, bits);
  /// Softmax temperature on squared distances. Default 1e-4.
  TORCH_ARG(double, tau) = 1e-4;
  /// Maximum DKM iterations per forward (T). Default 3.
  TORCH_ARG(int64_t, max_iter) = 3;
  /// Stop iterating when the inertia changes by at most this. Default 1e-4.
  TORCH_ARG(double, epsilon) = 1e-4;
  /// Floor of the attention (clamp, not renormalised). Default 1e-7.
  TORCH_ARG(double, zero_threshold) = 1e-7;
  /// Subtracted from the distance to centroid 0 (biases weights to it). Default 1e-7.
  TORCH_ARG(double, prune_threshold) = 1e-7;
  /// Keep centroid 0 fixed at exactly zero. Default false.
  TORCH_ARG(bool, enforce_zero) = false;
  /// Per-tensor or per-grouped-channel LUTs. Default kPerTensor.
  TORCH_ARG(Granularity, granularity) = Granularity::kPerTensor;
  /// Output rows per LUT for kPerGroupedChannel; must divide dim 0. Default 0 (unset).
  TORCH_ARG(int64_t, group_size) = 0;
  /// Divide each output row by a scale before clustering, multiply after. Default false.
  TORCH_ARG(bool, per_channel_scale) = false;
  /// How the per-channel scale is computed. Default kMinMax.
  TORCH_ARG(ScaleScheme, scale_scheme) = ScaleScheme::kMinMax;
  /// Vector clustering: vectors of this many consecutive output channels (dense engine). Default 1.
  TORCH_ARG(int64_t, cluster_dim) = 1;
  /// Training step at which clustering starts; before it the weight passes through. Default 0.
  TORCH_ARG(int64_t, milestone) = 0;
  /// Only tensors with more elements than this are clustered (by modules). Default 2048.
  TORCH_ARG(int64_t, weight_threshold) = 2048;
  /// Centroid initialisation. Default kAuto.
  TORCH_ARG(KMeansInit, init) = KMeansInit::kAuto;
  /// kAuto picks the exact 1-D init up to this many distinct values per group. Default 65536.
  TORCH_ARG(int64_t, opt1d_max_unique) = 65536;
  /// Lloyd iterations after k-means++ seeding. Default 100.
  TORCH_ARG(int64_t, init_max_iter) = 100;
  /// Seed of the k-means++ sampling. Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Engine. Default kAuto: the table or streaming engine wherever they take the weight (memory
  /// O(N), the same values and gradients as the dense reference), kDense only where neither does.
  TORCH_ARG(Engine, engine) = Engine::kAuto;
  /// Table engine on fp32 weights: cluster their bf16 rounding (identity in backward). Default false.
  TORCH_ARG(bool, table_fp32_as_bf16) = false;
  /// Table engine: keep eDKM's explicit 16-bit index per weight (into the table of the U distinct
  /// values) for backward, as the paper's uniquification does, instead of reading each weight's own
  /// bits: 2 bytes per weight more, which saved-tensor hooks (Offloader, ShardedOffloader) then
  /// move or split. Same result; for like-for-like comparisons (the ablation's index-list rows).
  /// Default false.
  TORCH_ARG(bool, table_index_list) = false;

  // TORCH_ARG leaves the access at private:
 public:
  /// K = 2^bits.
  int64_t n_clusters() const { return int64_t{1} << bits_; }
  /// Throws c10::Error naming the first invalid option.
  void validate() const;
};

/// What one differentiable clustering pass returns.
struct DKMOutput {
  at::Tensor weight;       ///< W_soft: shape and dtype of the input weight, differentiable
  at::Tensor centroids;    ///< G x K x cluster_dim, fp32 (fp64 for fp64 weights), detached
  int64_t iterations = 0;  ///< iterations run (<= max_iter)
  double inertia = 0;      ///< sum_i min_j D_ij of the last iteration, summed over groups
};

/// Geometry of a weight under the options: groups (LUTs) and vectors per group.
struct EDKM_API ClusterLayout {
  int64_t groups = 1;       ///< G: number of LUTs
  int64_t vectors = 0;      ///< n: vectors per group
  int64_t cluster_dim = 1;  ///< d
  int64_t rows = 0;         ///< output rows (dim 0)
  /// Checks `weight` against `options` (dtype, finiteness, divisibility, ...) and derives the layout.
  static ClusterLayout of(const at::Tensor& weight, const DKMOptions& options);
};

namespace functional {

/// Per-output-row scale (rows x 1; fp64 for fp64 weights, else fp32) of `weight` under `scheme`; zero scales become 1.
EDKM_API at::Tensor channel_scale(const at::Tensor& weight, ScaleScheme scheme);

/// Rearranges `weight` (divided by `scale` when defined) into G x n x d clustering vectors.
/// Differentiable; the inverse is `from_vectors`.
EDKM_API at::Tensor to_vectors(const at::Tensor& weight, const ClusterLayout& layout, const at::Tensor& scale = {});
/// Inverse of `to_vectors`: G x n x d back to `shape` (multiplied by `scale` when defined).
EDKM_API at::Tensor from_vectors(const at::Tensor& vectors, at::IntArrayRef shape, const ClusterLayout& layout,
                                 const at::Tensor& scale = {});

/// Initial centroids (G x K x d) of `weight` (divided by `scale` when defined) per options.init().
EDKM_API at::Tensor init_centroids(const at::Tensor& weight, const DKMOptions& options, const at::Tensor& scale = {});

/// One differentiable clustering pass from `centroids` (G x K x d, treated as constants).
/// `scale` (rows x 1) is required when options.per_channel_scale() is set, and refused when it is
/// not (every engine must see the same weight).
EDKM_API DKMOutput dkm_cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                               const at::Tensor& scale = {});

/// Hard assignment: the nearest centroid of every vector (G x n, uint8), with the
/// prune_threshold bias towards centroid 0. Memory O(N), never N x K for cluster_dim == 1.
EDKM_API at::Tensor assign(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                           const at::Tensor& scale = {});

}  // namespace functional
}  // namespace edkm
