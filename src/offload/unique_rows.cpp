// Uniquify: distinct rows of a byte buffer by a per-row hash, verified bitwise.
#include "offload/unique_rows.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/_unique2.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argsort.h>
#include <ATen/ops/bitwise_right_shift.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/masked_select.h>
#include <ATen/ops/searchsorted.h>

#include <algorithm>

namespace edkm::detail {
namespace {

constexpr int64_t kChunkRows = int64_t{1} << 20;   // bounds the temporaries: ~8-16 bytes x this
constexpr int64_t kSampleRows = int64_t{4} << 16;  // a first look: more distinct rows -> give up early

// The widest integer type whose size divides `row_bytes`: rows are compared as words of it.
at::ScalarType word_type(int64_t row_bytes) {
  if (row_bytes % 8 == 0) return at::kLong;
  if (row_bytes % 4 == 0) return at::kInt;
  if (row_bytes % 2 == 0) return at::kShort;
  return at::kByte;
}

template <class F>
void for_chunks(int64_t rows, F&& f) {
  for (int64_t begin = 0; begin < rows; begin += kChunkRows) f(begin, std::min(kChunkRows, rows - begin));
}

}  // namespace

at::Tensor hash_rows(const at::Tensor& words) {
  const int64_t rows = words.size(0), width = words.size(1);
  auto h = at::empty({rows}, words.options().dtype(at::kLong));
  for_chunks(rows, [&](int64_t begin, int64_t n) {
    const auto w = words.narrow(0, begin, n);
    auto x = at::full({n}, static_cast<int64_t>(0x243F6A8885A308D3LL), h.options());
    for (int64_t j = 0; j < width; ++j) {
      x = (x ^ w.select(1, j).to(at::kLong)) * static_cast<int64_t>(0x9E3779B97F4A7C15ULL);
      x = x ^ (at::bitwise_right_shift(x, 29) & ((int64_t{1} << 35) - 1));  // logical shift: bijective
    }
    h.narrow(0, begin, n).copy_(x);
  });
  return h;
}

std::optional<UniqueRows> find_unique_rows(const at::Tensor& bytes, int64_t row_bytes) {
  const int64_t nbytes = bytes.numel();
  if (row_bytes <= 0 || nbytes % row_bytes != 0) return std::nullopt;
  const int64_t rows = nbytes / row_bytes;
  const auto wt = word_type(row_bytes);
  const int64_t width = row_bytes / static_cast<int64_t>(c10::elementSize(wt));
  // Not worth it unless U rows + 2 bytes per row fit in half the bytes (U >= 1).
  if (row_bytes + 2 * rows > nbytes / 2) return std::nullopt;
  const at::Tensor words = bytes.view(wt).view({rows, width});

  at::Tensor h = hash_rows(words);  // rows, int64
  // Distinct hashes of a sample first: a buffer with many distinct rows (fp32 weights) is
  // rejected after sorting kSampleRows hashes, not all of them.
  at::Tensor uh = std::get<0>(at::_unique2(h.narrow(0, 0, std::min(rows, kSampleRows)), /*sorted=*/true));
  if (uh.size(0) > kMaxUniqueRows) return std::nullopt;
  if (rows > kSampleRows) {
    // Hashes not in the sample's set, collected chunk by chunk, join it.
    std::vector<at::Tensor> missing;
    int64_t n_missing = 0;
    bool too_many = false;
    for_chunks(rows, [&](int64_t begin, int64_t n) {
      if (too_many) return;
      const auto hc = h.narrow(0, begin, n);
      const auto pos = at::searchsorted(uh, hc).clamp_max(uh.size(0) - 1);
      auto m = at::masked_select(hc, uh.index_select(0, pos) != hc);
      if (m.numel() == 0) return;
      missing.push_back(std::get<0>(at::_unique2(m, /*sorted=*/true)));
      n_missing += missing.back().numel();
      if (n_missing > 4 * kMaxUniqueRows) {  // merge what was collected; stop once it is too many
        auto merged = std::get<0>(at::_unique2(at::cat(missing), /*sorted=*/true));
        too_many = merged.size(0) > kMaxUniqueRows;
        n_missing = merged.size(0);
        missing = {std::move(merged)};
      }
    });
    if (too_many) return std::nullopt;
    if (!missing.empty()) {
      missing.push_back(uh);
      uh = std::get<0>(at::_unique2(at::cat(missing), /*sorted=*/true));
      if (uh.size(0) > kMaxUniqueRows) return std::nullopt;
    }
  }
  const int64_t unique = uh.size(0);
  if (unique * row_bytes + 2 * rows > nbytes / 2) return std::nullopt;

  // Label of each row in sorted-hash order (int32), then the first occurrence of each label.
  const auto long_opts = h.options();
  auto first = at::full({unique}, rows, long_opts);
  at::Tensor label = at::empty({rows}, h.options().dtype(at::kInt));
  for_chunks(rows, [&](int64_t begin, int64_t n) {
    auto pos = at::searchsorted(uh, h.narrow(0, begin, n));  // int64: an index for scatter
    first.scatter_reduce_(0, pos, at::arange(begin, begin + n, long_opts), "amin");
    label.narrow(0, begin, n).copy_(pos);
  });
  h.reset();
  // Renumber by first occurrence: equal row structures give equal labels.
  const auto order = at::argsort(first);              // new label -> old label
  const auto rank = at::argsort(order).to(at::kInt);  // old label -> new label
  const auto reps = first.index_select(0, order);     // first row of each new label
  UniqueRows out;
  out.unique = unique;
  const at::Tensor table_words = words.index_select(0, reps);  // U x W
  out.index = at::empty({rows}, long_opts.dtype(at::kShort));
  bool same = true;
  for_chunks(rows, [&](int64_t begin, int64_t n) {
    if (!same) return;
    const auto l = rank.index_select(0, label.narrow(0, begin, n));
    // Verify: every row equals its label's representative, bit for bit (a hash collision fails).
    same = at::equal(table_words.index_select(0, l), words.narrow(0, begin, n));
    out.index.narrow(0, begin, n).copy_(l - 32768);
  });
  if (!same) return std::nullopt;
  out.table = table_words.view(at::kByte).view({unique, row_bytes});
  out.reps = reps;
  return out;
}

std::optional<at::Tensor> rows_by_index(const at::Tensor& bytes, int64_t row_bytes, const at::Tensor& index,
                                        const at::Tensor& reps, int64_t first_row) {
  if (row_bytes <= 0 || bytes.numel() % row_bytes != 0) return std::nullopt;
  const int64_t rows = bytes.numel() / row_bytes, covered = index.numel();
  if (first_row < 0 || first_row + covered > rows) return std::nullopt;
  const auto wt = word_type(row_bytes);
  const at::Tensor words = bytes.view(wt).view({rows, row_bytes / static_cast<int64_t>(c10::elementSize(wt))});
  const at::Tensor table_words = words.index_select(0, reps);
  bool same = true;
  for_chunks(covered, [&](int64_t begin, int64_t n) {
    if (same)
      same = at::equal(table_words.index_select(0, index.narrow(0, begin, n).to(at::kInt) + 32768),
                       words.narrow(0, first_row + begin, n));
  });
  if (!same) return std::nullopt;
  return table_words.view(at::kByte).view({-1, row_bytes});
}

int64_t uniquify_row_bytes(const at::Tensor& t, int64_t storage_nbytes) {
  if (t.dim() < 2 || t.storage_offset() != 0 || !t.is_non_overlapping_and_dense() ||
      t.numel() * static_cast<int64_t>(t.element_size()) != storage_nbytes)
    return 0;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.stride(d) == 1 && t.size(d) > 1) return t.size(d) * static_cast<int64_t>(t.element_size());
  return 0;
}

at::Tensor expand_unique_rows(const at::Tensor& table, const at::Tensor& index, int64_t row_bytes) {
  const auto wt = word_type(row_bytes);
  const int64_t width = row_bytes / static_cast<int64_t>(c10::elementSize(wt));
  const auto words = table.view(wt).view({-1, width});
  return words.index_select(0, index.to(at::kInt) + 32768).view(at::kByte).view({-1});
}

}  // namespace edkm::detail
