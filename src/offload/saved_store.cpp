// The store of saved tensors behind both offloaders (see saved_store.h).
#include "offload/saved_store.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <tuple>

#include "memory/peak.h"
#include "offload/unique_rows.h"
#include "util/format.h"

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace edkm {

namespace {
// Every counter of the stats, by name: snapshot, reset and to_json walk one list.
#define EDKM_STORE_COUNTERS(X) \
  X(tensors_packed)            \
  X(tensors_kept)              \
  X(tensors_unpacked)          \
  X(storages_kept)             \
  X(storage_bytes_kept)        \
  X(bytes_stored)              \
  X(copies_avoided)            \
  X(bytes_not_copied)          \
  X(restores)                  \
  X(bytes_restored)            \
  X(restores_shared)           \
  X(kept_bytes)                \
  X(kept_bytes_peak)           \
  X(pool_hits)                 \
  X(pool_misses)               \
  X(prefetches)                \
  X(prefetch_hits)             \
  X(prefetch_wasted)           \
  X(tensors_uniquified)        \
  X(uniquify_bytes_before)     \
  X(uniquify_bytes_after)      \
  X(index_lists_shared)
}  // namespace

std::string SavedStoreStats::to_string() const {
  using detail::mib;
  std::string s = fmt::format(
      "packed {} (kept {}), unpacked {}; {} storages of {} kept, {} stored; de-dup avoided {} copies, {}; {} restores "
      "of {} ({} shared); kept {} now (peak {})",
      tensors_packed, tensors_kept, tensors_unpacked, storages_kept, mib(storage_bytes_kept), mib(bytes_stored),
      copies_avoided, mib(bytes_not_copied), restores, mib(bytes_restored), restores_shared, mib(kept_bytes),
      mib(kept_bytes_peak));
  if (prefetches > 0 || prefetch_wasted > 0)
    s += fmt::format("; prefetched {} ({} hits, {} wasted)", prefetches, prefetch_hits, prefetch_wasted);
  if (tensors_uniquified > 0)
    s += fmt::format("; uniquified {} ({} -> {}, {} shared index lists)", tensors_uniquified,
                     mib(uniquify_bytes_before), mib(uniquify_bytes_after), index_lists_shared);
  if (pool_hits > 0 || pool_misses > 0)
    s += fmt::format("; pool {} hits, {} misses, {} cached", pool_hits, pool_misses, mib(pool_cached_bytes));
  return s;
}

std::string SavedStoreStats::to_json() const {
  nlohmann::json j;
#define EDKM_JSON_FIELD(name) j[#name] = name;
  EDKM_STORE_COUNTERS(EDKM_JSON_FIELD)
#undef EDKM_JSON_FIELD
  j["pool_cached_bytes"] = pool_cached_bytes;
  j["pool"] = {{"reserved_bytes", pool.reserved_bytes},
               {"in_use_bytes", pool.in_use_bytes},
               {"requested_bytes", pool.requested_bytes},
               {"cached_bytes", pool.cached_bytes},
               {"peak_reserved_bytes", pool.peak_reserved_bytes},
               {"peak_in_use_bytes", pool.peak_in_use_bytes},
               {"hits", pool.hits},
               {"misses", pool.misses},
               {"system_frees", pool.system_frees},
               {"blocks_in_use", pool.blocks_in_use},
               {"cached_blocks", pool.cached_blocks},
               {"pinned_fallbacks", pool.pinned_fallbacks}};
  return j.dump();
}

namespace detail {

SavedStoreStats StoreCounters::snapshot() const {
  SavedStoreStats s;
#define EDKM_SNAPSHOT_FIELD(name) s.name = name.load();
  EDKM_STORE_COUNTERS(EDKM_SNAPSHOT_FIELD)
#undef EDKM_SNAPSHOT_FIELD
  return s;
}

void StoreCounters::reset() {
  const int64_t now = kept_bytes.load();
#define EDKM_RESET_FIELD(name) name.store(0);
  EDKM_STORE_COUNTERS(EDKM_RESET_FIELD)
#undef EDKM_RESET_FIELD
  kept_bytes.store(now);
  kept_bytes_peak.store(now);
}

Block pool_block(HostMemoryPool& pool, int64_t n) {
  auto block = pool.allocate(static_cast<size_t>(n));
  Block b;
  b.pool = block.reused() ? Block::Pool::kHit : Block::Pool::kMiss;
  b.accounted = static_cast<int64_t>(block.capacity());
  b.pinned = block.pinned();
  b.bytes = HostMemoryPool::wrap(std::move(block), {n}, at::kByte);
  return b;
}

SavedStore::Kept::~Kept() {
  if (prefetched.defined()) store->counters.prefetch_wasted.fetch_add(1);
  prefetched.reset();
  store->release(data);
}

SavedStore::SavedStore(std::unique_ptr<Placement> placement, SavedStoreOptions options)
    : placement_(std::move(placement)), options_(options) {}

Block SavedStore::keep(const at::Tensor& bytes, Part part) {
  Block b = placement_->keep(bytes, part);
  if (b.pool != Block::Pool::kNone)
    (b.pool == Block::Pool::kHit ? counters.pool_hits : counters.pool_misses).fetch_add(1);
  add_to_current(counters.kept_bytes, counters.kept_bytes_peak, b.accounted);
  counters.bytes_stored.fetch_add(b.bytes.numel());
  return b;
}

void SavedStore::release(Block& b) {
  if (!b.bytes.defined()) return;
  b.wait_copies();
  counters.kept_bytes.fetch_sub(b.accounted);
  b.bytes.reset();  // a pool block goes back to its pool
}

at::Tensor SavedStore::restore(Kept& kept) {
  int64_t moved = 0;
  at::Tensor out;
  if (kept.index) {
    const int64_t rows = kept.index->rows;
    const auto labels = placement_->restore(kept.index->labels, Part::kLabels, kept.device, moved);
    const auto table = placement_->restore(kept.data, Part::kTable, kept.device, moved);
    out = expand_unique_rows(table, labels.narrow(0, 0, 2 * rows).view(at::kShort), kept.row_bytes);
  } else {
    out = placement_->restore(kept.data, Part::kStorage, kept.device, moved);
  }
  counters.restores.fetch_add(1);
  counters.bytes_restored.fetch_add(moved);
  return out;
}

std::pair<std::shared_ptr<SavedStore::IndexList>, at::Tensor> SavedStore::fit_index_list(const at::Tensor& source,
                                                                                         int64_t row_bytes) {
  index_lists_.erase(std::remove_if(index_lists_.begin(), index_lists_.end(), [](auto& w) { return w.expired(); }),
                     index_lists_.end());
  const int64_t rows = source.numel() / row_bytes;
  for (auto it = index_lists_.rbegin(); it != index_lists_.rend(); ++it) {
    auto list = it->lock();
    // The same saving test as a new list (U rows + the index in at most half the bytes). Both are
    // equal on every rank, so every rank reaches the same agreement calls.
    if (!list || list->rows != rows || !uniquify_worth_it(list->unique, rows, row_bytes, source.numel())) continue;
    const auto [labels, first_row] = placement_->held_labels(list->labels, rows, source.device());
    auto table = rows_by_index(source, row_bytes, labels, list->reps.to(source.device()), first_row);
    if (placement_->all_agree(table.has_value())) return {std::move(list), std::move(*table)};
  }
  return {nullptr, at::Tensor()};
}

void SavedStore::store(Kept& kept, const at::Tensor& source, int64_t row_bytes) {
  std::shared_ptr<IndexList> list;
  at::Tensor table;
  if (options_.uniquify && row_bytes > 0) {
    // Rows that fit an index list already made (the other N x K maps of the same weight) only
    // need their representatives: no hashing, and the list is shared.
    std::tie(list, table) = fit_index_list(source, row_bytes);
    if (list) {
      counters.index_lists_shared.fetch_add(1);
    } else if (auto u = find_unique_rows(source, row_bytes)) {
      list = std::make_shared<IndexList>();
      list->store = shared_from_this();
      list->rows = u->index.numel();
      list->unique = u->unique;
      list->reps = u->reps.cpu();
      list->labels = keep(u->index.view(at::kByte), Part::kLabels);
      counters.uniquify_bytes_after.fetch_add(2 * list->rows);
      index_lists_.push_back(list);
      table = u->table;
    }
  }
  if (!list) {
    kept.data = keep(source, Part::kStorage);
    return;
  }
  kept.row_bytes = row_bytes;
  kept.index = std::move(list);
  kept.data = keep(table.view({-1}), Part::kTable);
  counters.tensors_uniquified.fetch_add(1);
  counters.uniquify_bytes_before.fetch_add(kept.nbytes);
  counters.uniquify_bytes_after.fetch_add(table.numel());
}

std::any SavedStore::pack(const at::Tensor& tensor) {
  counters.tensors_packed.fetch_add(1);
  auto packed = std::make_shared<Packed>();
  if (tensor.defined()) packed->record_version(tensor);
  if (!storage_backed(tensor) || !placement_->accepts(tensor) ||
      tensor.numel() * static_cast<int64_t>(tensor.element_size()) < options_.min_bytes) {
    packed->kept = tensor;
    return packed;
  }
  const c10::Storage& storage = tensor.storage();
  const auto nbytes = static_cast<int64_t>(storage.nbytes());
  packed->describe(tensor);

  std::lock_guard<std::mutex> lock(mu);
  by_storage_.purge();
  for (auto it = order.begin(); it != order.end();) it = it->second.expired() ? order.erase(it) : std::next(it);
  counters.tensors_kept.fetch_add(1);
  if (options_.dedup) {
    // Same storage, same contents (no in-place write since the copy), same size: reuse.
    if (auto kept = by_storage_.find(tensor, nbytes)) {
      counters.copies_avoided.fetch_add(1);
      counters.bytes_not_copied.fetch_add(nbytes);
      packed->attach(std::move(kept));
      return packed;
    }
  }
  auto kept = std::make_shared<Kept>();
  kept->store = shared_from_this();
  kept->nbytes = nbytes;
  kept->device = tensor.device();
  kept->version = tensor._version();
  kept->seq = next_seq_++;
  store(*kept, storage_bytes(storage, tensor.device()), uniquify_row_bytes(tensor, nbytes));
  counters.storages_kept.fetch_add(1);
  counters.storage_bytes_kept.fetch_add(nbytes);
  order.emplace(kept->seq, kept);
  if (options_.dedup) by_storage_.add(storage, kept);  // replaces a stale entry (written in place since)
  packed->attach(std::move(kept));
  return packed;
}

at::Tensor SavedStore::unpack(const std::any& value, const char* who) {
  const auto* p = std::any_cast<std::shared_ptr<Packed>>(&value);
  TORCH_CHECK(p && *p, who, "::unpack: the value was not packed by an edkm::", who, " (or was moved from)");
  Packed& packed = **p;
  counters.tensors_unpacked.fetch_add(1);
  packed.check_version(who);
  if (!packed.storage) return packed.kept;
  Kept& kept = *packed.storage;
  TORCH_CHECK(kept.store.get() == this, who, "::unpack: the value was packed by another edkm::", who);
  TORCH_CHECK(kept.data.bytes.defined(), who, "::unpack: the kept copy of this saved tensor was freed");
  at::Tensor bytes;
  int64_t new_round = 0;  // > 0: this unpack started a restore round of its storage
  {
    std::lock_guard<std::mutex> lock(kept.mu);
    if (kept.keep.defined()) {
      bytes = kept.keep;  // restored in this round for another view
    } else if (options_.reuse_live_restore && kept.restored) {
      if (auto impl = kept.restored->lock()) {
        bytes = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(kept.device));
        bytes.set_(c10::Storage(std::move(impl)), 0, {kept.nbytes}, {1});
      }
    }
    if (bytes.defined()) {
      counters.restores_shared.fetch_add(1);
      kept.seen(packed.round_seen);
    } else {
      if (kept.prefetched.defined()) {
        bytes = std::move(kept.prefetched);
        kept.prefetched = at::Tensor();
        counters.prefetch_hits.fetch_add(1);
#if defined(EDKM_WITH_CUDA)
        if (kept.device.is_cuda()) {
          // Restored on a side stream: this stream waits for it, and the allocator keeps its
          // memory until this stream is done with it.
          auto stream = c10::cuda::getCurrentCUDAStream(kept.device.index());
          kept.prefetch_ready.block(stream);
          c10::cuda::CUDACachingAllocator::recordStream(bytes.storage().data_ptr(), stream);
        }
#endif
      } else {
#if defined(EDKM_WITH_CUDA)
        std::optional<c10::cuda::CUDAGuard> device_guard;
        if (kept.device.is_cuda()) device_guard.emplace(kept.device);
#endif
        bytes = restore(kept);
      }
      kept.restored = bytes.storage().getWeakStorageImpl();
      kept.start_round(packed.round_seen, bytes);
      new_round = kept.round;
    }
  }
  if (new_round > 0 && after_new_round) after_new_round(kept, new_round);
  return packed.view_on(bytes);
}

}  // namespace detail
}  // namespace edkm
