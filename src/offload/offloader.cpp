// The offloader: saved tensors to host memory (a HostMemoryPool), de-duplicated by storage,
// optionally uniquified, restored once per storage and prefetched in backward.
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <c10/core/Storage.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <iomanip>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "edkm/offload.h"
#include "memory/peak.h"
#include "offload/prefetch.h"
#include "offload/storage_registry.h"
#include "offload/unique_rows.h"
#include "util/format.h"

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace edkm {

namespace {

struct Counters {
  std::atomic<int64_t> tensors_packed{0}, tensors_offloaded{0}, tensors_unpacked{0}, storages_copied{0},
      bytes_offloaded{0}, copies_avoided{0}, bytes_not_copied{0}, bytes_restored{0}, restores_shared{0}, host_bytes{0},
      host_bytes_peak{0}, pool_hits{0}, pool_misses{0}, prefetches{0}, prefetch_hits{0}, prefetch_wasted{0},
      tensors_uniquified{0}, uniquify_bytes_before{0}, uniquify_bytes_after{0}, index_lists_shared{0};

  void add_host_bytes(int64_t n) { detail::add_to_current(host_bytes, host_bytes_peak, n); }
};

at::Tensor empty_bytes(int64_t n, const at::Device& device) {
  return at::empty({n}, at::TensorOptions().dtype(at::kByte).device(device));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// State

struct Offloader::State {
  explicit State(const OffloadOptions& o) : options(o), pool(o.pool()) {
    if (!pool)
      pool = std::make_shared<HostMemoryPool>(
          HostMemoryPoolOptions().pinned(o.pin_memory()).max_cached_bytes(o.pool_max_cached_bytes()));
  }
  OffloadOptions options;
  std::shared_ptr<HostMemoryPool> pool;
  Counters counters;

  // A host buffer from the pool and the CUDA events of the copies that write and read it.
  struct HostBuffer {
    at::Tensor bytes;  // uint8, exactly the bytes stored
    int64_t capacity = 0;
    bool pinned = false;
    bool copy_pending = false;  // CUDA: the device-to-host copy was queued on a side stream
#if defined(EDKM_WITH_CUDA)
    c10::cuda::CUDAEvent copied, last_read;  // d2h done; last h2d read done
#endif
    // Stream `s` may read the buffer: after the copy to host, and recorded as its last reader.
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
    // No copy may still write or read it (before it goes back to the pool, or is compared).
    void wait_copies() {
#if defined(EDKM_WITH_CUDA)
      if (copy_pending) copied.synchronize();
      last_read.synchronize();
#endif
    }
  };

  // A 16-bit index list of uniquified storages, shared by those with the same row structure.
  struct IndexList {
    std::shared_ptr<State> state;
    HostBuffer buffer;  // rows x int16
    at::Tensor reps;    // U int64 on the CPU: the first row of each label
    int64_t rows = 0, unique = 0;
    ~IndexList() { state->release(buffer); }
  };

  std::mutex mu;  // guards by_storage, order, index_lists, the prefetch direction
  struct HostStorage;
  detail::StorageRegistry<HostStorage> by_storage;
  std::map<int64_t, std::weak_ptr<HostStorage>> order;  // live host copies by pack sequence
  int64_t next_seq = 0;
  std::vector<std::weak_ptr<IndexList>> index_lists;
  detail::PrefetchDirection direction;  // learned from the order of restores (offload/prefetch.h)
  std::weak_ptr<HostStorage> cursor;    // where prefetching continues from (see prefetch_after)

  std::mutex prefetch_mu;                             // guards `prefetched`; taken before any HostStorage::mu
  std::deque<std::weak_ptr<HostStorage>> prefetched;  // outstanding prefetches, oldest first

  // The host copy of one storage, shared by every saved tensor (view) of it.
  struct HostStorage : detail::KeptStorage {
    std::shared_ptr<State> state;
    HostBuffer data;                   // the storage bytes, or its distinct rows when uniquified
    std::shared_ptr<IndexList> index;  // uniquified: the row -> distinct row index
    int64_t row_bytes = 0;             // uniquified: bytes per row
    int64_t seq = 0;
    // Under `mu`:
    std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>> restored;  // device copy while in use
    at::Tensor prefetched;  // a device copy restored ahead of time, not yet used
#if defined(EDKM_WITH_CUDA)
    c10::cuda::CUDAEvent prefetch_ready;
#endif
    // One restore per storage: the device copy is held (`keep`) from the first unpack of a round
    // until every live view of the storage has been unpacked in that round (KeptStorage).
    bool restored_alive() const { return restored && !restored->expired(); }
    int64_t restore_bytes() const { return data.bytes.numel() + (index ? index->buffer.bytes.numel() : 0); }

    ~HostStorage() {
      if (prefetched.defined()) state->counters.prefetch_wasted.fetch_add(1);
      prefetched.reset();
      state->release(data);
    }
  };

  // What pack returns: the host copy and where the tensor sits in its storage, or the tensor.
  using Packed = detail::SavedView<HostStorage>;

  HostBuffer acquire(int64_t nbytes) {
    auto block = pool->allocate(static_cast<size_t>(nbytes));
    (block.reused() ? counters.pool_hits : counters.pool_misses).fetch_add(1);
    HostBuffer b;
    b.capacity = static_cast<int64_t>(block.capacity());
    b.pinned = block.pinned();
    b.bytes = HostMemoryPool::wrap(std::move(block), {nbytes}, at::kByte);
    counters.add_host_bytes(b.capacity);
    return b;
  }

  void release(HostBuffer& b) {
    if (!b.bytes.defined()) return;
    b.wait_copies();
    counters.host_bytes.fetch_sub(b.capacity);
    b.bytes.reset();  // the block goes back to the pool
  }

  // Copies `src` (device bytes) into `dst` (CUDA: on a side stream when async and pinned).
  void copy_to_host(HostBuffer& dst, const at::Tensor& src) {
    if (src.is_cuda()) {
#if defined(EDKM_WITH_CUDA)
      const c10::cuda::CUDAGuard device_guard(src.device());
      if (options.async() && dst.pinned) {
        // The side stream waits for the producer of `src`, copies, and records `copied`.
        auto current = c10::cuda::getCurrentCUDAStream();
        auto side = c10::cuda::getStreamFromPool(false, src.device().index());
        c10::cuda::CUDAEvent produced;
        produced.record(current);
        produced.block(side);
        {
          const c10::cuda::CUDAStreamGuard stream_guard(side);
          dst.bytes.copy_(src, /*non_blocking=*/true);
        }
        dst.copied.record(side);
        dst.copy_pending = true;
        // The caching allocator must not reuse the source memory before the side stream has read
        // it, even if the tensor is freed right after pack (that is the point of offloading).
        c10::cuda::CUDACachingAllocator::recordStream(src.storage().data_ptr(), side);
      } else {
        dst.bytes.copy_(src);
      }
#else
      TORCH_CHECK(false, "Offloader: a CUDA tensor was saved but edkm was built without CUDA");
#endif
    } else {
      dst.bytes.copy_(src);
    }
  }

  // Host buffer -> a new device tensor of its bytes, on the current stream.
  static at::Tensor to_device(HostBuffer& b, const at::Device& device) {
    auto out = empty_bytes(b.bytes.numel(), device);
    if (device.is_cuda()) {
#if defined(EDKM_WITH_CUDA)
      auto stream = c10::cuda::getCurrentCUDAStream();
      b.before_read(stream);
      out.copy_(b.bytes, /*non_blocking=*/b.pinned);
      b.after_read(stream);
#endif
    } else {
      out.copy_(b.bytes);
    }
    return out;
  }

  // The storage's bytes on its device, on the current stream (caller holds h.mu).
  at::Tensor restore(HostStorage& h) {
    at::Tensor out;
    if (h.index) {
      out = detail::expand_unique_rows(to_device(h.data, h.device),
                                       to_device(h.index->buffer, h.device).view(at::kShort), h.row_bytes);
    } else {
      out = to_device(h.data, h.device);
    }
    counters.bytes_restored.fetch_add(h.restore_bytes());
    return out;
  }

  // Stores `h`'s storage bytes `source` on the host, uniquified when asked and worth it
  // (caller holds `mu`).
  void store(HostStorage& h, const at::Tensor& source, int64_t row_bytes) {
    std::shared_ptr<IndexList> list;
    at::Tensor table;
    if (options.uniquify() && row_bytes > 0) {
      // Rows that fit an index list already made (the other N x K maps of the same weight) only
      // need their representatives: no hashing, and the list is shared.
      std::tie(list, table) = fit_index_list(source, row_bytes);
      if (list) {
        counters.index_lists_shared.fetch_add(1);
      } else if (auto u = detail::find_unique_rows(source, row_bytes)) {
        const int64_t rows = u->index.numel();
        list = std::make_shared<IndexList>();
        list->state = h.state;
        list->rows = rows;
        list->unique = u->unique;
        list->reps = u->reps.cpu();
        list->buffer = acquire(rows * 2);
        copy_to_host(list->buffer, u->index.view(at::kByte));
        counters.bytes_offloaded.fetch_add(rows * 2);
        counters.uniquify_bytes_after.fetch_add(rows * 2);
        index_lists.push_back(list);
        table = u->table;
      }
    }
    if (!list) {
      h.data = acquire(h.nbytes);
      copy_to_host(h.data, source);
      counters.bytes_offloaded.fetch_add(h.nbytes);
      return;
    }
    h.row_bytes = row_bytes;
    h.index = std::move(list);
    h.data = acquire(table.numel());
    copy_to_host(h.data, table.view({-1}));
    counters.bytes_offloaded.fetch_add(table.numel());
    counters.tensors_uniquified.fetch_add(1);
    counters.uniquify_bytes_before.fetch_add(h.nbytes);
    counters.uniquify_bytes_after.fetch_add(table.numel());
  }

  // A live index list that the rows of `source` fit, most recent first, and the rows' table
  // (caller holds `mu`); or nulls.
  std::pair<std::shared_ptr<IndexList>, at::Tensor> fit_index_list(const at::Tensor& source, int64_t row_bytes) {
    index_lists.erase(std::remove_if(index_lists.begin(), index_lists.end(), [](auto& w) { return w.expired(); }),
                      index_lists.end());
    const int64_t rows = source.numel() / row_bytes;
    for (auto it = index_lists.rbegin(); it != index_lists.rend(); ++it) {
      auto list = it->lock();
      // The same saving test as a new list (U rows + the index in at most half the bytes).
      if (!list || list->rows != rows || !detail::uniquify_worth_it(list->unique, rows, row_bytes, source.numel()))
        continue;
      list->buffer.wait_copies();  // CUDA: the index is read on the host, or copied from it
      const auto index = list->buffer.bytes.view(at::kShort).to(source.device());
      if (auto table = detail::rows_by_index(source, row_bytes, index, list->reps.to(source.device())))
        return {std::move(list), std::move(*table)};
    }
    return {nullptr, at::Tensor()};
  }

  // Drops map entries whose source storage or host copy is gone (caller holds `mu`).
  void purge() {
    by_storage.purge();
    for (auto it = order.begin(); it != order.end();) it = it->second.expired() ? order.erase(it) : std::next(it);
  }

  // Restores ahead of time the storages backward is expected to need after `current`.
  void prefetch_after(const HostStorage& current, int64_t current_round);
  // Frees the oldest outstanding prefetches until `incoming` more bytes fit (caller holds prefetch_mu).
  bool make_room(int64_t incoming);
};

bool Offloader::State::make_room(int64_t incoming) {
  const int64_t max_count = options.prefetch(), max_bytes = options.prefetch_max_bytes();
  if (max_bytes > 0 && incoming > max_bytes) return false;
  for (;;) {
    int64_t count = 0, bytes = 0;
    std::vector<std::shared_ptr<HostStorage>> live;
    for (auto it = prefetched.begin(); it != prefetched.end();) {
      auto h = it->lock();
      bool outstanding = false;
      if (h) {
        std::lock_guard<std::mutex> lock(h->mu);
        outstanding = h->prefetched.defined();
        if (outstanding) bytes += h->nbytes;
      }
      if (!outstanding) {
        it = prefetched.erase(it);
        continue;
      }
      ++count;
      live.push_back(std::move(h));
      ++it;
    }
    if (count < max_count && (max_bytes == 0 || bytes + incoming <= max_bytes)) return true;
    if (live.empty()) return false;
    {  // a guess that was not used (yet): the oldest goes
      std::lock_guard<std::mutex> lock(live.front()->mu);
      if (live.front()->prefetched.defined()) {
        live.front()->prefetched.reset();
        counters.prefetch_wasted.fetch_add(1);
      }
    }
    prefetched.pop_front();
  }
}

void Offloader::State::prefetch_after(const HostStorage& current, int64_t current_round) {
  const int64_t want = options.prefetch();
  std::vector<std::shared_ptr<HostStorage>> candidates;
  {
    std::lock_guard<std::mutex> lock(mu);
    direction.observe(current.seq);
    const bool reverse = direction.reverse();
    // The walk in `order`, from `from`, over storages not restored yet in this backward.
    auto step = [&](std::map<int64_t, std::weak_ptr<HostStorage>>::iterator it) -> std::shared_ptr<HostStorage> {
      while (true) {
        if (reverse) {
          if (it == order.begin()) return nullptr;
          --it;
        } else if (++it == order.end()) {
          return nullptr;
        }
        auto h = it->second.lock();
        if (!h || h->device != current.device) continue;
        std::lock_guard<std::mutex> hl(h->mu);
        if (h->round < current_round && h->live_views > 0) return h;
      }
    };
    // The cursor: the last storage restored in sequence (the rules: offload/prefetch.h).
    auto cur = cursor.lock();
    int64_t cursor_round = -1;
    if (cur) {
      std::lock_guard<std::mutex> hl(cur->mu);
      cursor_round = cur->round;
    }
    const bool in_round = cur && cur.get() != &current && cursor_round == current_round;
    int64_t next_seq = -1;
    if (in_round) {
      auto next = step(order.find(cur->seq));
      next_seq = next ? next->seq : -1;
    }
    const int64_t moved = detail::next_cursor(cur ? cur->seq : -1, in_round, current.seq, next_seq, reverse);
    if (!cur || moved != cur->seq) cursor = order[moved];
    auto from = cursor.lock();
    if (!from) return;
    auto it = order.find(from->seq);
    while (it != order.end() && static_cast<int64_t>(candidates.size()) < want) {
      auto h = step(it);
      if (!h) break;
      it = order.find(h->seq);
      candidates.push_back(std::move(h));
    }
  }
  std::lock_guard<std::mutex> lock(prefetch_mu);
  for (auto& h : candidates) {
    {
      std::lock_guard<std::mutex> hl(h->mu);
      if (h->prefetched.defined() || h->restored_alive()) continue;
    }
    if (!make_room(h->nbytes)) continue;
    std::lock_guard<std::mutex> hl(h->mu);
    if (h->prefetched.defined() || h->restored_alive()) continue;
    if (h->device.is_cuda()) {
#if defined(EDKM_WITH_CUDA)
      const c10::cuda::CUDAGuard device_guard(h->device);
      if (options.async()) {
        auto side = c10::cuda::getStreamFromPool(false, h->device.index());
        {
          const c10::cuda::CUDAStreamGuard stream_guard(side);  // allocation, copies and expansion on `side`
          h->prefetched = restore(*h);
        }
        h->prefetch_ready.record(side);
      } else {
        h->prefetched = restore(*h);
      }
#endif
    } else {
      h->prefetched = restore(*h);
    }
    counters.prefetches.fetch_add(1);
    prefetched.push_back(h);
  }
}

// ---------------------------------------------------------------------------------------------

void OffloadOptions::validate() const {
  TORCH_CHECK(min_bytes_ >= 0, "OffloadOptions: min_bytes must be >= 0, got ", min_bytes_);
  TORCH_CHECK(pool_max_cached_bytes_ >= 0, "OffloadOptions: pool_max_cached_bytes must be >= 0, got ",
              pool_max_cached_bytes_);
  TORCH_CHECK(prefetch_ >= 0, "OffloadOptions: prefetch must be >= 0 (storages restored ahead; 0 = off), got ",
              prefetch_);
  TORCH_CHECK(prefetch_max_bytes_ >= 0, "OffloadOptions: prefetch_max_bytes must be >= 0 (0 = no bound), got ",
              prefetch_max_bytes_);
}

std::string OffloadStats::to_string() const {
  using detail::mib;
  return fmt::format(
      "packed {} (offloaded {}), unpacked {}; copied {} storages, {} to host; de-dup avoided {} copies, {}; restored "
      "{} "
      "({} shared); prefetched {} ({} hits, {} wasted); uniquified {} ({} -> {}, {} shared index lists); host {} (peak "
      "{}); pool {} hits, {} misses, {} cached",
      tensors_packed, tensors_offloaded, tensors_unpacked, storages_copied, mib(bytes_offloaded), copies_avoided,
      mib(bytes_not_copied), mib(bytes_restored), restores_shared, prefetches, prefetch_hits, prefetch_wasted,
      tensors_uniquified, mib(uniquify_bytes_before), mib(uniquify_bytes_after), index_lists_shared, mib(host_bytes),
      mib(host_bytes_peak), pool_hits, pool_misses, mib(pool_cached_bytes));
}

Offloader::Offloader(OffloadOptions options) : options_(std::move(options)) {
  options_.validate();
  state_ = std::make_shared<State>(options_);
}

Offloader::~Offloader() = default;

std::any Offloader::pack(const at::Tensor& tensor) {
  auto& st = *state_;
  st.counters.tensors_packed.fetch_add(1);
  auto packed = std::make_shared<State::Packed>();
  const bool plain =
      detail::storage_backed(tensor) && (tensor.is_cuda() || (tensor.is_cpu() && options_.host_to_host()));
  if (!plain || tensor.numel() * static_cast<int64_t>(tensor.element_size()) < options_.min_bytes()) {
    packed->kept = tensor;
    return packed;
  }
  const c10::Storage& storage = tensor.storage();
  const auto nbytes = static_cast<int64_t>(storage.nbytes());
  packed->describe(tensor);

  std::lock_guard<std::mutex> lock(st.mu);
  st.purge();
  if (options_.dedup()) {
    // Same storage, same contents (no in-place write since the copy), same size: reuse.
    if (auto host = st.by_storage.find(tensor, nbytes)) {
      st.counters.copies_avoided.fetch_add(1);
      st.counters.bytes_not_copied.fetch_add(nbytes);
      st.counters.tensors_offloaded.fetch_add(1);
      packed->attach(std::move(host));
      return packed;
    }
  }

  auto host = std::make_shared<State::HostStorage>();
  host->state = state_;
  host->nbytes = nbytes;
  host->device = tensor.device();
  host->version = tensor._version();
  host->seq = st.next_seq++;
  st.store(*host, detail::storage_bytes(storage, tensor.device()), detail::uniquify_row_bytes(tensor, nbytes));
  st.counters.storages_copied.fetch_add(1);
  st.counters.tensors_offloaded.fetch_add(1);
  st.order.emplace(host->seq, host);
  if (options_.dedup()) st.by_storage.add(storage, host);  // replaces a stale entry (written in place since)
  packed->attach(std::move(host));
  return packed;
}

at::Tensor Offloader::unpack(const std::any& value) {
  const auto* p = std::any_cast<std::shared_ptr<State::Packed>>(&value);
  TORCH_CHECK(p && *p, "Offloader::unpack: the value was not packed by an edkm::Offloader (or was moved from)");
  State::Packed& packed = **p;
  auto& st = *state_;
  st.counters.tensors_unpacked.fetch_add(1);
  if (!packed.storage) return packed.kept;
  auto& host = *packed.storage;
  TORCH_CHECK(host.data.bytes.defined(), "Offloader::unpack: the host copy of this saved tensor was freed");
  at::Tensor device_bytes;
  int64_t new_round = 0;  // > 0: this unpack started a restore round of its storage
  {
    std::lock_guard<std::mutex> lock(host.mu);
    if (host.restored) {
      if (auto impl = host.restored->lock()) {
        device_bytes = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(host.device));
        device_bytes.set_(c10::Storage(std::move(impl)), 0, {host.nbytes}, {1});
        st.counters.restores_shared.fetch_add(1);
        host.seen(packed.round_seen);
      }
    }
    if (!device_bytes.defined()) {
      if (host.prefetched.defined()) {
        device_bytes = std::move(host.prefetched);
        host.prefetched = at::Tensor();
        st.counters.prefetch_hits.fetch_add(1);
#if defined(EDKM_WITH_CUDA)
        if (host.device.is_cuda()) {
          // Restored on a side stream: this stream waits for it, and the allocator keeps its
          // memory until this stream is done with it.
          auto stream = c10::cuda::getCurrentCUDAStream(host.device.index());
          host.prefetch_ready.block(stream);
          c10::cuda::CUDACachingAllocator::recordStream(device_bytes.storage().data_ptr(), stream);
        }
#endif
      } else {
#if defined(EDKM_WITH_CUDA)
        std::optional<c10::cuda::CUDAGuard> device_guard;
        if (host.device.is_cuda()) device_guard.emplace(host.device);
#endif
        device_bytes = st.restore(host);
      }
      host.restored = device_bytes.storage().getWeakStorageImpl();
      host.start_round(packed.round_seen, device_bytes);
      new_round = host.round;
    }
  }
  if (new_round > 0 && options_.prefetch() > 0) st.prefetch_after(host, new_round);
  return packed.view_on(device_bytes);
}

OffloadStats Offloader::stats() const {
  const auto& c = state_->counters;
  OffloadStats s;
  s.tensors_packed = c.tensors_packed;
  s.tensors_offloaded = c.tensors_offloaded;
  s.tensors_unpacked = c.tensors_unpacked;
  s.storages_copied = c.storages_copied;
  s.bytes_offloaded = c.bytes_offloaded;
  s.copies_avoided = c.copies_avoided;
  s.bytes_not_copied = c.bytes_not_copied;
  s.bytes_restored = c.bytes_restored;
  s.restores_shared = c.restores_shared;
  s.host_bytes = c.host_bytes;
  s.host_bytes_peak = c.host_bytes_peak;
  s.pool_hits = c.pool_hits;
  s.pool_misses = c.pool_misses;
  s.prefetches = c.prefetches;
  s.prefetch_hits = c.prefetch_hits;
  s.prefetch_wasted = c.prefetch_wasted;
  s.tensors_uniquified = c.tensors_uniquified;
  s.uniquify_bytes_before = c.uniquify_bytes_before;
  s.uniquify_bytes_after = c.uniquify_bytes_after;
  s.index_lists_shared = c.index_lists_shared;
  s.pool = state_->pool->stats();
  s.pool_cached_bytes = s.pool.cached_bytes;
  return s;
}

void Offloader::reset_stats() {
  auto& c = state_->counters;
  for (auto* a : {&c.tensors_packed, &c.tensors_offloaded, &c.tensors_unpacked, &c.storages_copied, &c.bytes_offloaded,
                  &c.copies_avoided, &c.bytes_not_copied, &c.bytes_restored, &c.restores_shared, &c.pool_hits,
                  &c.pool_misses, &c.prefetches, &c.prefetch_hits, &c.prefetch_wasted, &c.tensors_uniquified,
                  &c.uniquify_bytes_before, &c.uniquify_bytes_after, &c.index_lists_shared})
    a->store(0);
  c.host_bytes_peak.store(c.host_bytes.load());
}

void Offloader::empty_pool() { state_->pool->empty_cache(); }

const std::shared_ptr<HostMemoryPool>& Offloader::pool() const { return state_->pool; }

OffloadGuard::OffloadGuard(OffloadOptions options) : OffloadGuard(std::make_shared<Offloader>(std::move(options))) {}

namespace {
std::shared_ptr<Offloader> checked(std::shared_ptr<Offloader> offloader) {
  TORCH_CHECK(offloader, "OffloadGuard: null offloader");
  return offloader;
}
}  // namespace

OffloadGuard::OffloadGuard(std::shared_ptr<Offloader> offloader)
    : offloader_(checked(std::move(offloader))), guard_(offloader_) {}

}  // namespace edkm
