// Dynamic padding, length bucketing and chunked processing.
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "edkm/nn/padding.h"

namespace edkm {

PaddedBatch pad_sequences(const std::vector<at::Tensor>& sequences, const PadOptions& options) {
  TORCH_CHECK(!sequences.empty(), "edkm: pad_sequences: no sequences");
  TORCH_CHECK(options.pad_to_multiple_of() >= 1, "edkm: pad_sequences: pad_to_multiple_of must be >= 1, got ",
              options.pad_to_multiple_of());
  const at::Tensor& first = sequences[0];
  int64_t longest = 0;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const at::Tensor& s = sequences[i];
    TORCH_CHECK(s.defined() && s.dim() >= 1, "edkm: pad_sequences: sequence ", i,
                " must be a tensor [length, ...], got ", s.defined() ? s.sizes() : at::IntArrayRef{});
    TORCH_CHECK(s.sizes().slice(1) == first.sizes().slice(1), "edkm: pad_sequences: sequence ", i,
                " has trailing dims ", s.sizes().slice(1), ", sequence 0 has ", first.sizes().slice(1));
    TORCH_CHECK(s.scalar_type() == first.scalar_type() && s.device() == first.device(),
                "edkm: pad_sequences: sequence ", i, " is ", s.scalar_type(), " on ", s.device(), ", sequence 0 is ",
                first.scalar_type(), " on ", first.device());
    longest = std::max(longest, s.size(0));
  }
  const int64_t m = options.pad_to_multiple_of();
  longest = (longest + m - 1) / m * m;
  const auto batch = static_cast<int64_t>(sequences.size());
  std::vector<int64_t> shape{batch, longest};
  shape.insert(shape.end(), first.sizes().begin() + 1, first.sizes().end());

  PaddedBatch out;
  out.values = at::full(shape, options.pad_value(), first.options());
  out.attention_mask = at::zeros({batch, longest}, first.options().dtype(at::kLong));
  std::vector<int64_t> lengths(sequences.size());
  for (int64_t b = 0; b < batch; ++b) {
    const at::Tensor& s = sequences[b];
    const int64_t len = s.size(0), start = options.left() ? longest - len : 0;
    lengths[b] = len;
    out.values[b].narrow(0, start, len).copy_(s);
    out.attention_mask[b].narrow(0, start, len).fill_(1);
  }
  out.lengths = at::tensor(lengths, at::TensorOptions().dtype(at::kLong)).to(first.device());
  return out;
}

std::vector<std::vector<int64_t>> bucket_by_length(const std::vector<int64_t>& lengths, const BucketOptions& options) {
  TORCH_CHECK(options.batch_size() >= 1, "edkm: bucket_by_length: batch_size must be >= 1, got ", options.batch_size());
  TORCH_CHECK(options.max_tokens() >= 0, "edkm: bucket_by_length: max_tokens must be >= 0 (0: no limit), got ",
              options.max_tokens());
  for (size_t i = 0; i < lengths.size(); ++i)
    TORCH_CHECK(lengths[i] >= 0, "edkm: bucket_by_length: length ", i, " is negative (", lengths[i], ")");
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] < lengths[b]; });

  std::vector<std::vector<int64_t>> batches;
  std::vector<int64_t> cur;
  for (int64_t idx : order) {
    // sorted ascending: the newcomer is the batch's longest
    const bool full =
        static_cast<int64_t>(cur.size()) == options.batch_size() ||
        (options.max_tokens() > 0 && static_cast<int64_t>(cur.size() + 1) * lengths[idx] > options.max_tokens());
    if (!cur.empty() && full) batches.push_back(std::move(cur)), cur.clear();
    cur.push_back(idx);
  }
  if (!cur.empty()) batches.push_back(std::move(cur));
  if (options.shuffle()) {
    std::mt19937_64 rng(options.seed());
    std::shuffle(batches.begin(), batches.end(), rng);
  }
  return batches;
}

int64_t padded_tokens(const std::vector<int64_t>& lengths, const std::vector<std::vector<int64_t>>& batches) {
  int64_t total = 0;
  for (const auto& b : batches) {
    int64_t longest = 0;
    for (int64_t i : b) {
      TORCH_CHECK(i >= 0 && i < static_cast<int64_t>(lengths.size()), "edkm: padded_tokens: index ", i,
                  " out of range for ", lengths.size(), " lengths");
      longest = std::max(longest, lengths[i]);
    }
    total += longest * static_cast<int64_t>(b.size());
  }
  return total;
}

namespace functional {

at::Tensor chunked(const TensorFunction& fn, const at::Tensor& x, const ChunkOptions& options,
                   const std::vector<at::Tensor>& params) {
  TORCH_CHECK(fn, "edkm: chunked: the callable is empty");
  TORCH_CHECK(x.defined() && x.dim() >= 1, "edkm: chunked: input must be a tensor with at least one dim");
  TORCH_CHECK(options.chunk_size() >= 1, "edkm: chunked: chunk_size must be >= 1, got ", options.chunk_size());
  TORCH_CHECK(options.dim() >= -x.dim() && options.dim() < x.dim(), "edkm: chunked: dim ", options.dim(),
              " out of range for an input of ", x.dim(), " dims");
  const int64_t dim = options.dim() < 0 ? options.dim() + x.dim() : options.dim();
  const int64_t n = x.size(dim);
  std::vector<at::Tensor> outs;
  for (int64_t start = 0; start < n; start += options.chunk_size()) {
    const at::Tensor part = x.narrow(dim, start, std::min(options.chunk_size(), n - start));
    outs.push_back(options.checkpoint() ? checkpoint(fn, part, params) : fn(part));
  }
  if (outs.empty()) return fn(x);  // an empty dim: let fn give the output's shape
  return outs.size() == 1 ? outs[0] : at::cat(outs, dim);
}

}  // namespace functional
}  // namespace edkm
