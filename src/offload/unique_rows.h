#pragma once
// Repeated rows of a byte buffer (the offloader's "uniquify"): U distinct rows and a 16-bit index
// per row, found by a 64-bit hash per row and verified bitwise. Device-generic (ATen ops), with
// temporaries bounded by processing rows in chunks.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include "edkm/export.h"

EDKM_INTERNAL_BEGIN
namespace edkm::detail {

/// The most distinct rows a 16-bit index can address.
constexpr int64_t kMaxUniqueRows = int64_t{1} << 16;

struct UniqueRows {
  at::Tensor table;  ///< U x row_bytes uint8: the distinct rows, in order of first occurrence
  at::Tensor index;  ///< rows int16: (label - 32768), label in [0, U), first occurrence order
  at::Tensor reps;   ///< U int64: the row where each label first occurs
  int64_t unique = 0;
};

/// The distinct rows of `bytes` (a contiguous uint8 tensor of rows x row_bytes bytes), when there
/// are at most kMaxUniqueRows of them and storing them with the index takes at most half of
/// `bytes`; otherwise (or on a hash collision) nothing. Labels are numbered in order of first
/// occurrence, so two buffers with the same row structure get equal indices.
std::optional<UniqueRows> find_unique_rows(const at::Tensor& bytes, int64_t row_bytes);

/// The rows of `bytes` as `table` rows picked by an existing index (int16, as in UniqueRows) with
/// representatives `reps` (U int64 rows of `bytes`), when every row the index covers equals the
/// row of its label's representative bit for bit (rows that fit an index list already made need no
/// hashing); else nothing. The index covers rows [first_row, first_row + index.numel()) of
/// `bytes` (0 and all rows by default; a sharded index list checks its own block). `index` and
/// `reps` on the device of `bytes`.
std::optional<at::Tensor> rows_by_index(const at::Tensor& bytes, int64_t row_bytes, const at::Tensor& index,
                                        const at::Tensor& reps, int64_t first_row = 0);

/// Bytes of one row for uniquify of a saved tensor `t` whose storage has `storage_nbytes` bytes:
/// when `t` (>= 2 dims) covers its whole storage densely (any permutation of a contiguous
/// layout), the storage is rows of its innermost dimension (the one of stride 1). 0 otherwise.
int64_t uniquify_row_bytes(const at::Tensor& t, int64_t storage_nbytes);

/// Whether storing U distinct rows of `row_bytes` plus a 16-bit index per row saves at least half
/// of `nbytes` (the test of find_unique_rows, for reusing an index list of `rows` rows).
inline bool uniquify_worth_it(int64_t unique, int64_t rows, int64_t row_bytes, int64_t nbytes) {
  return row_bytes > 0 && rows * row_bytes == nbytes && unique * row_bytes + 2 * rows <= nbytes / 2;
}

/// A 64-bit hash per row of `words` (rows x W integers, int64 out), streaming over the words:
/// h = F(...F(F(seed ^ w0) ^ w1)...), F a bijective multiply-xorshift. Equal rows hash equally;
/// different rows rarely do, and callers verify.
at::Tensor hash_rows(const at::Tensor& words);

/// The rows back: table.index_select(index) as `rows * row_bytes` uint8 bytes on the table's
/// device (`index` on that device too).
at::Tensor expand_unique_rows(const at::Tensor& table, const at::Tensor& index, int64_t row_bytes);

}  // namespace edkm::detail
EDKM_INTERNAL_END
