#pragma once
// The Offloader's prefetch heuristic, as pure rules over pack sequence numbers (tested alone in
// offload_test.cpp; the Offloader applies them under its locks, src/offload/offloader.cpp).
//
// In backward, saved storages are restored roughly in reverse pack order, but not exactly: a
// storage used by several nodes (the weight, in every DKM iteration) is unpacked again out of
// order, and custom functions may unpack in forward order. So:
//  - the direction is learned from the order of successive first restores (a score clamped to
//    [-4, 4], starting at -2: reverse until the restores say otherwise);
//  - prefetching walks on from a cursor, the last storage restored in sequence: a restore that is
//    the next one after the cursor (in the walk's direction) moves it there, any other restore in
//    the same backward leaves it where it is, and the first restore of a new backward resets it.
#include <algorithm>
#include <cstdint>

namespace edkm::detail {

class PrefetchDirection {
 public:
  /// A storage's first restore in this backward, by its pack sequence number.
  void observe(int64_t seq) {
    if (last_ >= 0 && last_ != seq) score_ = std::clamp(score_ + (seq < last_ ? -1 : 1), -4, 4);
    last_ = seq;
  }
  /// Whether the walk goes toward earlier packs (backward's usual order).
  bool reverse() const { return score_ <= 0; }
  int score() const { return score_; }

 private:
  int64_t last_ = -1;
  int score_ = -2;
};

/// Where the cursor goes after restoring `current`.
///   cursor: the cursor's sequence number (-1: none); cursor_in_round: the cursor's storage was
///   restored in this backward; next: the first storage after the cursor that the walk would visit
///   (not yet restored in this backward; -1: none); reverse: the walk's direction.
inline int64_t next_cursor(int64_t cursor, bool cursor_in_round, int64_t current, int64_t next, bool reverse) {
  if (cursor < 0 || cursor == current || !cursor_in_round) return current;  // a new backward starts here
  // `current` was restored in this backward already, so the walk skips it: is it next to the cursor?
  const bool adjacent =
      reverse ? (current < cursor && current > next) : (current > cursor && (next < 0 || current < next));
  return adjacent ? current : cursor;
}

}  // namespace edkm::detail
