#pragma once
// One store of saved tensors for both offloaders. The Offloader (host memory, prefetch) and
// dist::ShardedOffloader (this rank's 1/world block, all-gathered back) are facades over a
// SavedStore with their own Placement, which says where bytes are kept and how they come back.
//
// The store does what is the same for both (storage_registry.h for the pieces):
//  - pack: which saved tensors are kept (plain storage-backed, at least min_bytes, a device the
//    placement takes), de-dup by storage (version checked), a sequence number in pack order;
//  - uniquify (unique_rows.h): distinct rows + a 16-bit index list, index lists shared by storages
//    of the same row structure (the placement agrees on a fit across ranks);
//  - unpack: one restore per storage per backward round, shared by its views; a prefetched copy
//    taken when there is one; a hook after a new round (the Offloader's prefetcher);
//  - one set of counters (edkm::SavedStoreStats).
#include <ATen/core/Tensor.h>
#include <c10/core/Storage.h>

#include <any>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "edkm/memory/host_pool.h"
#include "edkm/offload/saved_store_stats.h"
#include "offload/storage_registry.h"

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDAEvent.h>
#include "edkm/export.h"
#endif

EDKM_INTERNAL_BEGIN
namespace edkm::detail {

/// What a kept block of bytes holds: a whole storage, the distinct rows of a uniquified one (kept
/// whole by every placement), or an index list's int16 labels.
enum class Part { kStorage, kTable, kLabels };

/// Bytes a placement keeps, and the CUDA events of the copies that write and read them.
struct Block {
  at::Tensor bytes;       // uint8
  int64_t accounted = 0;  // bytes counted in kept_bytes while the block lives
  bool pinned = false;
  enum class Pool : int8_t { kNone, kHit, kMiss } pool = Pool::kNone;  // from a host pool: served from its cache?
  bool copy_pending = false;  // CUDA: the copy into the block was queued on a side stream
#if defined(EDKM_WITH_CUDA)
  c10::cuda::CUDAEvent copied, last_read;  // copy in done; last copy out done
#endif
  // Stream `s` may read the block: after the copy in, and recorded as its last reader.
  template <class Stream>
  void before_read(const Stream& s) {
#if defined(EDKM_WITH_CUDA)
    if (copy_pending) copied.block(s);
    last_read.block(s);  // earlier readers on other streams are done before this one records
#else
    (void)s;
#endif
  }
  template <class Stream>
  void after_read(const Stream& s) {
#if defined(EDKM_WITH_CUDA)
    last_read.record(s);
#else
    (void)s;
#endif
  }
  // No copy may still write or read it (before it is freed, or read on the host).
  void wait_copies() {
#if defined(EDKM_WITH_CUDA)
    if (copy_pending) copied.synchronize();
    last_read.synchronize();
#endif
  }
};

/// A block of `n` bytes from `pool`, accounted at the pool block's capacity.
Block pool_block(HostMemoryPool& pool, int64_t n);

/// Where a store keeps bytes. Every call but release is made under the store's lock, in pack and
/// unpack order (the sharded placement runs collectives in them: every rank makes the same calls).
class Placement {
 public:
  virtual ~Placement() = default;
  /// Whether saved tensors on `t`'s device are kept at all.
  virtual bool accepts(const at::Tensor& t) const = 0;
  /// Keeps `bytes` (uint8, contiguous, on the saved tensor's device).
  virtual Block keep(const at::Tensor& bytes, Part part) = 0;
  /// The bytes kept in `block` back whole on `device` (a sharded part: all blocks, padding
  /// included), on the current stream; `moved` is the traffic it took.
  virtual at::Tensor restore(Block& block, Part part, const at::Device& device, int64_t& moved) = 0;
  /// The labels of an index list of `rows` rows that this placement holds, on `device`, and the
  /// first row they cover.
  virtual std::pair<at::Tensor, int64_t> held_labels(Block& labels, int64_t rows, const at::Device& device) = 0;
  /// Whether a fit holds everywhere (sharded: on every rank; a collective).
  virtual bool all_agree(bool fits) { return fits; }
};

struct SavedStoreOptions {
  int64_t min_bytes = 0;
  bool dedup = true;
  bool uniquify = false;
  /// Unpack may reuse a restored storage still alive after its round (a view of it kept by the
  /// user). Off for collectives, where every rank must restore in the same order.
  bool reuse_live_restore = true;
};

struct StoreCounters {
  std::atomic<int64_t> tensors_packed{0}, tensors_kept{0}, tensors_unpacked{0}, storages_kept{0}, storage_bytes_kept{0},
      bytes_stored{0}, copies_avoided{0}, bytes_not_copied{0}, restores{0}, bytes_restored{0}, restores_shared{0},
      kept_bytes{0}, kept_bytes_peak{0}, pool_hits{0}, pool_misses{0}, prefetches{0}, prefetch_hits{0},
      prefetch_wasted{0}, tensors_uniquified{0}, uniquify_bytes_before{0}, uniquify_bytes_after{0},
      index_lists_shared{0};
  SavedStoreStats snapshot() const;
  /// Zeroes the counters; kept_bytes stays, kept_bytes_peak starts from it.
  void reset();
};

class SavedStore : public std::enable_shared_from_this<SavedStore> {
 public:
  // A 16-bit index list of uniquified storages, shared by those with the same row structure.
  struct IndexList {
    std::shared_ptr<SavedStore> store;
    Block labels;     // rows int16 (or the placement's share of them)
    at::Tensor reps;  // U int64 on the CPU: the first row of each label
    int64_t rows = 0, unique = 0;
    ~IndexList() { store->release(labels); }
  };
  // The kept copy of one storage, shared by every saved view of it.
  struct Kept : KeptStorage {
    std::shared_ptr<SavedStore> store;
    Block data;                        // the storage bytes, or its distinct rows when uniquified
    std::shared_ptr<IndexList> index;  // uniquified: the row -> distinct row index
    int64_t row_bytes = 0;             // uniquified: bytes per row
    int64_t seq = 0;                   // pack order
    // Under `mu`:
    std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>> restored;  // device copy while in use
    at::Tensor prefetched;                                              // restored ahead of time, not yet used
#if defined(EDKM_WITH_CUDA)
    c10::cuda::CUDAEvent prefetch_ready;  // the side stream's restore of `prefetched` is done
#endif
    bool restored_alive() const { return restored && !restored->expired(); }
    ~Kept();
  };
  using Packed = SavedView<Kept>;

  SavedStore(std::unique_ptr<Placement> placement, SavedStoreOptions options);

  std::any pack(const at::Tensor& tensor);
  /// `who` names the facade in errors.
  at::Tensor unpack(const std::any& value, const char* who);
  /// The storage's bytes on its device, on the current stream (caller holds kept.mu).
  at::Tensor restore(Kept& kept);

  /// Called (outside every lock) after an unpack started restore round `round` of `kept`.
  std::function<void(Kept& kept, int64_t round)> after_new_round;

  StoreCounters counters;
  std::mutex mu;                                 // guards what pack changes: the registry, `order`, the index lists
  std::map<int64_t, std::weak_ptr<Kept>> order;  // live kept storages by pack sequence

  void release(Block& block);

 private:
  Block keep(const at::Tensor& bytes, Part part);
  void store(Kept& kept, const at::Tensor& source, int64_t row_bytes);
  std::pair<std::shared_ptr<IndexList>, at::Tensor> fit_index_list(const at::Tensor& source, int64_t row_bytes);

  std::unique_ptr<Placement> placement_;
  SavedStoreOptions options_;
  StorageRegistry<Kept> by_storage_;
  std::vector<std::weak_ptr<IndexList>> index_lists_;
  int64_t next_seq_ = 0;
};

}  // namespace edkm::detail
EDKM_INTERNAL_END
