#pragma once
// Local (sliding-window) attention, causal or bidirectional, computed in blocks: memory
// O(n * window) instead of full attention's O(n^2), with the same result as full attention under
// a band mask.
//
// Query i attends to keys j with i - window <= j <= i + window (bidirectional) or
// i - window <= j <= i (causal). Queries go in blocks of `block_size`; the block [s, e) attends to
// the keys [s - window, e + window) (causal: [s - window, e)), a strided view of the padded keys,
// so scores are [batch, heads, n, block_size + 2 * window] and no loop runs over positions.
#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <optional>

#include "edkm/export.h"

namespace edkm {

/// Options of functional::local_attention.
struct EDKM_API LocalAttentionFuncOptions {
  /* implicit */ LocalAttentionFuncOptions(int64_t window) : window_(window) {}
  /// Keys at most this many positions away are attended; > 0. Required.
  TORCH_ARG(int64_t, window);
  /// Only keys at or before the query. Default false.
  TORCH_ARG(bool, causal) = false;
  /// Queries per block; 0 picks `window` (at most n). Default 0.
  TORCH_ARG(int64_t, block_size) = 0;
  /// Score scale; unset: 1 / sqrt(head_dim). Default unset.
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
};

namespace functional {

/// Sliding-window attention of q, k: [batch, heads, n, head_dim] and v: [batch, heads, n, v_dim];
/// returns [batch, heads, n, v_dim]. Differentiable by ordinary autograd.
///
/// Example:
///   auto out = edkm::functional::local_attention(q, k, v, edkm::LocalAttentionFuncOptions(256).causal(true));
EDKM_API at::Tensor local_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const LocalAttentionFuncOptions& options);

/// n x n bool mask, true where query i may attend key j under a window (the band of local
/// attention).
EDKM_API at::Tensor band_mask(int64_t n, int64_t window, bool causal, at::Device device = at::kCPU);

/// Plain full attention softmax(q k^T * scale, masked) v with a bool `mask` (true = attend,
/// broadcast to [.., n, n]): the O(n^2) reference local attention equals with band_mask.
EDKM_API at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& mask, std::optional<double> scale = std::nullopt);

}  // namespace functional

/// Options of LocalSelfAttention.
struct EDKM_API LocalSelfAttentionOptions {
  LocalSelfAttentionOptions(int64_t embed_dim, int64_t num_heads, int64_t window)
      : embed_dim_(embed_dim), num_heads_(num_heads), window_(window) {}
  /// Model width; a multiple of num_heads. Required.
  TORCH_ARG(int64_t, embed_dim);
  /// Attention heads. Required.
  TORCH_ARG(int64_t, num_heads);
  /// Attention window; > 0. Required.
  TORCH_ARG(int64_t, window);
  /// Causal attention. Default false.
  TORCH_ARG(bool, causal) = false;
  /// Queries per block; 0 picks the window. Default 0.
  TORCH_ARG(int64_t, block_size) = 0;
  /// Biases in the projections. Default true.
  TORCH_ARG(bool, bias) = true;

 public:
  /// Throws on a non-positive size, a window <= 0 or embed_dim not divisible by num_heads.
  void validate() const;
};

/// Multi-head self-attention with a sliding window: x [batch, n, embed_dim] -> same shape.
///
/// Example:
///   edkm::LocalSelfAttention attn(edkm::LocalSelfAttentionOptions(512, 8, 256).causal(true));
///   auto y = attn(x);  // x: [batch, 8192, 512]
class EDKM_API LocalSelfAttentionImpl : public torch::nn::Cloneable<LocalSelfAttentionImpl> {
 public:
  explicit LocalSelfAttentionImpl(LocalSelfAttentionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  LocalSelfAttentionOptions options;
  torch::nn::Linear in_proj{nullptr};   ///< embed_dim -> 3 * embed_dim (q, k, v)
  torch::nn::Linear out_proj{nullptr};  ///< embed_dim -> embed_dim
};
TORCH_MODULE(LocalSelfAttention);

}  // namespace edkm
