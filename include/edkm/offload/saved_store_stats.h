#pragma once
// What a saved-tensor store did: one set of figures for both stores of saved tensors, the
// Offloader (host memory) and dist::ShardedOffloader (this rank's block of each storage). Both are
// facades over one store (src/offload/saved_store.h) with a different placement.
#include <cstdint>
#include <string>

#include "edkm/export.h"
#include "edkm/memory/host_pool.h"

namespace edkm {

/// Counters since the store was made (or since reset_stats()). Bytes are storage bytes.
struct EDKM_API SavedStoreStats {
  int64_t tensors_packed = 0;         ///< saved tensors seen by pack
  int64_t tensors_kept = 0;           ///< of those, kept by the store (copied or de-duplicated); others stay saved
  int64_t tensors_unpacked = 0;       ///< unpack calls (retain_graph counts each backward)
  int64_t storages_kept = 0;          ///< storages copied into the store
  int64_t storage_bytes_kept = 0;     ///< their whole-storage bytes
  int64_t bytes_stored = 0;           ///< bytes pack copied into kept memory (Offloader: device -> host traffic;
                                      ///< sharded: this rank's blocks, tables and index blocks)
  int64_t copies_avoided = 0;         ///< saved tensors whose storage was already kept (de-dup by storage)
  int64_t bytes_not_copied = 0;       ///< their storage bytes, not copied again
  int64_t restores = 0;               ///< storages brought back whole by unpack (sharded: all-gathers)
  int64_t bytes_restored = 0;         ///< bytes those restores moved (host -> device copies; sharded: received)
  int64_t restores_shared = 0;        ///< unpacks served by a storage already restored for another view
  int64_t kept_bytes = 0;             ///< bytes kept now for saved tensors (pool block capacities; sharded: blocks)
  int64_t kept_bytes_peak = 0;        ///< highest kept_bytes
  int64_t pool_hits = 0;              ///< host buffers of this store reused from the pool
  int64_t pool_misses = 0;            ///< host buffers of this store newly allocated by the pool
  int64_t pool_cached_bytes = 0;      ///< free host buffer bytes kept by the pool now (= pool.cached_bytes)
  int64_t prefetches = 0;             ///< storages restored ahead of time in backward (Offloader)
  int64_t prefetch_hits = 0;          ///< unpacks that found their storage already prefetched
  int64_t prefetch_wasted = 0;        ///< prefetched copies freed without being used
  int64_t tensors_uniquified = 0;     ///< storages stored as distinct rows + index
  int64_t uniquify_bytes_before = 0;  ///< their storage bytes
  int64_t uniquify_bytes_after = 0;   ///< what was kept for them: rows + the index lists made
  int64_t index_lists_shared = 0;     ///< uniquified storages that reused an index list
  HostPoolStats pool;                 ///< the host memory pool's own statistics (shared pools: all users)

  /// One line; groups that did nothing (prefetch, uniquify, pool) are left out.
  std::string to_string() const;
  /// A JSON object of every field (`pool` nested).
  std::string to_json() const;
};

}  // namespace edkm
