#pragma once
// Dynamic padding (pad a batch to its own longest sequence, with an attention mask), length
// bucketing, and chunked processing of long inputs.
//
// Memory: padding to the batch's longest instead of a global maximum length, and batching
// sequences of similar length, removes most pad tokens (and the activations computed on them);
// chunking runs a callable over slices of a long dim, so under no-grad only one chunk's
// intermediates exist at a time, and with checkpointing per chunk training keeps only the chunk
// inputs and outputs.
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "edkm/export.h"
#include "edkm/nn/activation_checkpoint.h"

namespace edkm {

/// Options of pad_sequences.
struct EDKM_API PadOptions {
  /// Value of the pad positions. Default 0.
  TORCH_ARG(double, pad_value) = 0;
  /// Round the padded length up to a multiple of this (e.g. 8 for tensor cores); >= 1. Default 1.
  TORCH_ARG(int64_t, pad_to_multiple_of) = 1;
  /// Pad on the left (generation) instead of the right. Default false.
  TORCH_ARG(bool, left) = false;
};

/// A padded batch.
struct EDKM_API PaddedBatch {
  at::Tensor values;          ///< [batch, longest, ...] the sequences, padded
  at::Tensor attention_mask;  ///< [batch, longest] int64, 1 on tokens, 0 on pads
  at::Tensor lengths;         ///< [batch] int64
};

/// Pads variable-length sequences ([length, ...] each, same dtype, device and trailing dims) to
/// the longest of the batch.
///
/// Example:
///   auto batch = edkm::pad_sequences({ids_a, ids_b, ids_c});  // 1-D token ids
///   auto logits = model(batch.values, batch.attention_mask);
EDKM_API PaddedBatch pad_sequences(const std::vector<at::Tensor>& sequences, const PadOptions& options = {});

/// Options of bucket_by_length.
struct EDKM_API BucketOptions {
  /* implicit */ BucketOptions(int64_t batch_size) : batch_size_(batch_size) {}
  /// Most sequences per batch; >= 1. Required.
  TORCH_ARG(int64_t, batch_size);
  /// Most tokens per padded batch (batch * longest), 0 for no limit; a sequence longer than this
  /// gets a batch of its own. Default 0.
  TORCH_ARG(int64_t, max_tokens) = 0;
  /// Shuffle the order of the batches (not their contents) with `seed`. Default false.
  TORCH_ARG(bool, shuffle) = false;
  /// Seed of the shuffle. Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
};

/// Groups sequence indices into batches of similar length: sorted by length (stable), cut into
/// consecutive runs within batch_size and max_tokens. Every index appears exactly once.
///
/// Example:
///   for (const auto& idx : edkm::bucket_by_length(lengths, edkm::BucketOptions(32).max_tokens(16384))) {...}
EDKM_API std::vector<std::vector<int64_t>> bucket_by_length(const std::vector<int64_t>& lengths,
                                                            const BucketOptions& options);

/// Padded elements (batch * longest, summed over batches) of a batching: what padding costs.
EDKM_API int64_t padded_tokens(const std::vector<int64_t>& lengths, const std::vector<std::vector<int64_t>>& batches);

/// Options of functional::chunked.
struct EDKM_API ChunkOptions {
  /* implicit */ ChunkOptions(int64_t chunk_size) : chunk_size_(chunk_size) {}
  /// Elements of `dim` per chunk; >= 1. Required.
  TORCH_ARG(int64_t, chunk_size);
  /// The dim split into chunks. Default 1 (the sequence of [batch, seq, ...]).
  TORCH_ARG(int64_t, dim) = 1;
  /// Checkpoint each chunk (keep only chunk inputs for backward). Default false.
  TORCH_ARG(bool, checkpoint) = false;
};

namespace functional {

/// cat(fn(chunk) for chunks of `x` along dim): equals fn(x) when fn treats positions along dim
/// independently (a feed-forward over tokens, a per-token loss). With checkpoint(true), `params`
/// are the tensors `fn` uses that need gradients (see functional::checkpoint).
///
/// Example:
///   auto y = edkm::functional::chunked([&](const at::Tensor& t) { return mlp->forward(t); }, x,
///                                      edkm::ChunkOptions(1024).checkpoint(true), mlp->parameters());
EDKM_API at::Tensor chunked(const TensorFunction& fn, const at::Tensor& x, const ChunkOptions& options,
                            const std::vector<at::Tensor>& params = {});

}  // namespace functional
}  // namespace edkm
