// The offloader: the saved-tensor store (offload/saved_store.h) with a host placement (buffers of
// a HostMemoryPool; CUDA copies on a side stream) and a prefetcher in backward.
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "edkm/offload/offloader.h"
#include "offload/prefetch.h"
#include "offload/saved_store.h"

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace edkm {

namespace detail {

/// Keeps bytes in host buffers of a pool. Device to host: on a side stream when async and the
/// buffer is pinned; host to device on the current stream.
class HostPlacement : public Placement {
 public:
  HostPlacement(std::shared_ptr<HostMemoryPool> pool, bool async, bool host_to_host)
      : pool_(std::move(pool)), async_(async), host_to_host_(host_to_host) {}

  bool accepts(const at::Tensor& t) const override { return t.is_cuda() || (t.is_cpu() && host_to_host_); }

  Block keep(const at::Tensor& bytes, Part) override {
    Block b = pool_block(*pool_, bytes.numel());
    copy_in(b, bytes);
    return b;
  }

  at::Tensor restore(Block& b, Part, const at::Device& device, int64_t& moved) override {
    auto out = at::empty({b.bytes.numel()}, at::TensorOptions().dtype(at::kByte).device(device));
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
    moved += b.bytes.numel();
    return out;
  }

  std::pair<at::Tensor, int64_t> held_labels(Block& labels, int64_t, const at::Device& device) override {
    labels.wait_copies();  // CUDA: the index is read on the host, or copied from it
    return {labels.bytes.view(at::kShort).to(device), 0};
  }

 private:
  // Copies `src` (device bytes) into `dst` (CUDA: on a side stream when async and pinned).
  void copy_in(Block& dst, const at::Tensor& src) {
    if (src.is_cuda()) {
#if defined(EDKM_WITH_CUDA)
      const c10::cuda::CUDAGuard device_guard(src.device());
      if (async_ && dst.pinned) {
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

  std::shared_ptr<HostMemoryPool> pool_;
  bool async_, host_to_host_;
};

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// State: the store, and the prefetcher that restores ahead of backward.

struct Offloader::State {
  using Kept = detail::SavedStore::Kept;

  explicit State(const OffloadOptions& o) : options(o), pool(o.pool()) {
    if (!pool)
      pool = std::make_shared<HostMemoryPool>(
          HostMemoryPoolOptions().pinned(o.pin_memory()).max_cached_bytes(o.pool_max_cached_bytes()));
    detail::SavedStoreOptions so;
    so.min_bytes = o.min_bytes();
    so.dedup = o.dedup();
    so.uniquify = o.uniquify();
    store = std::make_shared<detail::SavedStore>(
        std::make_unique<detail::HostPlacement>(pool, o.async(), o.host_to_host()), so);
  }
  OffloadOptions options;
  std::shared_ptr<HostMemoryPool> pool;
  std::shared_ptr<detail::SavedStore> store;

  // Under store->mu:
  detail::PrefetchDirection direction;  // learned from the order of restores (offload/prefetch.h)
  std::weak_ptr<Kept> cursor;           // where prefetching continues from (see prefetch_after)

  std::mutex prefetch_mu;                      // guards `prefetched`; taken before any Kept::mu
  std::deque<std::weak_ptr<Kept>> prefetched;  // outstanding prefetches, oldest first

  // Restores ahead of time the storages backward is expected to need after `current`.
  void prefetch_after(const Kept& current, int64_t current_round);
  // Frees the oldest outstanding prefetches until `incoming` more bytes fit (caller holds prefetch_mu).
  bool make_room(int64_t incoming);
};

bool Offloader::State::make_room(int64_t incoming) {
  const int64_t max_count = options.prefetch(), max_bytes = options.prefetch_max_bytes();
  if (max_bytes > 0 && incoming > max_bytes) return false;
  for (;;) {
    int64_t count = 0, bytes = 0;
    std::vector<std::shared_ptr<Kept>> live;
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
        store->counters.prefetch_wasted.fetch_add(1);
      }
    }
    prefetched.pop_front();
  }
}

void Offloader::State::prefetch_after(const Kept& current, int64_t current_round) {
  const int64_t want = options.prefetch();
  auto& order = store->order;
  std::vector<std::shared_ptr<Kept>> candidates;
  {
    std::lock_guard<std::mutex> lock(store->mu);
    direction.observe(current.seq);
    const bool reverse = direction.reverse();
    // The walk in `order`, from `from`, over storages not restored yet in this backward.
    auto step = [&](std::map<int64_t, std::weak_ptr<Kept>>::iterator it) -> std::shared_ptr<Kept> {
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
          h->prefetched = store->restore(*h);
        }
        h->prefetch_ready.record(side);
      } else {
        h->prefetched = store->restore(*h);
      }
#endif
    } else {
      h->prefetched = store->restore(*h);
    }
    store->counters.prefetches.fetch_add(1);
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

Offloader::Offloader(OffloadOptions options) : options_(std::move(options)) {
  options_.validate();
  state_ = std::make_shared<State>(options_);
  if (options_.prefetch() > 0) {
    // The store outlives neither the state nor this hook's target: a weak reference.
    std::weak_ptr<State> weak = state_;
    state_->store->after_new_round = [weak](State::Kept& kept, int64_t round) {
      if (auto st = weak.lock()) st->prefetch_after(kept, round);
    };
  }
}

Offloader::~Offloader() = default;

std::any Offloader::pack(const at::Tensor& tensor) { return state_->store->pack(tensor); }

at::Tensor Offloader::unpack(const std::any& value) { return state_->store->unpack(value, "Offloader"); }

OffloadStats Offloader::stats() const {
  OffloadStats s = state_->store->counters.snapshot();
  s.pool = state_->pool->stats();
  s.pool_cached_bytes = s.pool.cached_bytes;
  return s;
}

void Offloader::reset_stats() { state_->store->counters.reset(); }

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
