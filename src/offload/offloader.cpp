// The offloader: saved tensors to host memory, de-duplicated by storage, restored once per storage.
#include <ATen/ops/empty.h>
#include <c10/core/Storage.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <iomanip>
#include <mutex>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "edkm/offload.h"
#include "offload/host_buffer_pool.h"

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace edkm {

// ---------------------------------------------------------------------------------------------
// Pool

namespace detail {

int64_t HostBufferPool::size_class(int64_t bytes) {
  constexpr int64_t kMin = 4096;
  if (bytes <= kMin) return kMin;
  int64_t p = kMin;
  while (p < bytes) p <<= 1;   // p: the power of two >= bytes
  const int64_t step = p / 8;  // quarter steps between p/2 and p
  return (bytes + step - 1) / step * step;
}

at::Tensor HostBufferPool::acquire(int64_t bytes, bool pinned, bool* hit) {
  const int64_t size = size_class(bytes);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find({size, pinned});
    if (it != free_.end() && !it->second.empty()) {
      at::Tensor buffer = std::move(it->second.back());
      it->second.pop_back();
      cached_bytes_ -= size;
      *hit = true;
      return buffer;
    }
  }
  *hit = false;
  return at::empty({size}, at::TensorOptions().dtype(at::kByte).pinned_memory(pinned));
}

void HostBufferPool::release(at::Tensor buffer, bool pinned) {
  const int64_t size = buffer.numel();
  std::lock_guard<std::mutex> lock(mu_);
  if (cached_bytes_ + size > max_cached_bytes_) return;  // freed when `buffer` goes
  cached_bytes_ += size;
  free_[{size, pinned}].push_back(std::move(buffer));
}

void HostBufferPool::clear() {
  decltype(free_) dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    dropped.swap(free_);
    cached_bytes_ = 0;
  }
}

int64_t HostBufferPool::cached_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_bytes_;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// State

namespace {

struct Counters {
  std::atomic<int64_t> tensors_packed{0}, tensors_offloaded{0}, tensors_unpacked{0}, storages_copied{0},
      bytes_offloaded{0}, copies_avoided{0}, bytes_not_copied{0}, bytes_restored{0}, restores_shared{0}, host_bytes{0},
      host_bytes_peak{0}, pool_hits{0}, pool_misses{0};
};

// A uint8 tensor over the whole of `storage` (keeps it alive).
at::Tensor storage_bytes(const c10::Storage& storage, const at::Device& device) {
  auto t = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(device));
  t.set_(storage, 0, {static_cast<int64_t>(storage.nbytes())}, {1});
  return t;
}

}  // namespace

struct Offloader::State {
  explicit State(const OffloadOptions& o) : options(o), pool(o.pool_max_cached_bytes()) {}
  OffloadOptions options;
  Counters counters;
  detail::HostBufferPool pool;
  std::mutex mu;  // guards `by_storage`

  struct HostStorage;
  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> source;  // pins the StorageImpl address: no ABA on the key
    std::weak_ptr<HostStorage> host;
  };
  std::unordered_map<const c10::StorageImpl*, Entry> by_storage;

  // The host copy of one storage, shared by every saved tensor (view) of it.
  struct HostStorage {
    std::shared_ptr<State> state;
    at::Tensor buffer;  // pool buffer (>= nbytes)
    bool pinned = false;
    int64_t nbytes = 0;
    at::Device device{at::kCPU};
    int64_t version = 0;
    std::mutex mu;              // guards what follows
    bool copy_pending = false;  // CUDA: the device-to-host copy was queued on a side stream
    std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>> restored;  // device copy while in use
    // One restore per storage: the device copy is held (`keep`) from the first unpack of a round
    // until every live view of the storage has been unpacked in that round (or freed).
    at::Tensor keep;
    int64_t round = 0, live_views = 0, seen_in_round = 0;
    void settle() {  // caller holds `mu`
      if (seen_in_round >= live_views) keep.reset();
    }
#if defined(EDKM_WITH_CUDA)
    c10::cuda::CUDAEvent copied, restore_read;  // d2h done; last h2d read of `buffer` done
#endif

    ~HostStorage() {
#if defined(EDKM_WITH_CUDA)
      // The buffer goes back to the pool: no copy may still write or read it.
      if (copy_pending) copied.synchronize();
      restore_read.synchronize();
#endif
      state->counters.host_bytes.fetch_sub(buffer.numel());
      state->pool.release(std::move(buffer), pinned);
    }
  };

  // What pack returns: the host copy and where the tensor sits in its storage, or the tensor.
  struct Packed {
    at::Tensor kept;  // defined when not offloaded
    std::shared_ptr<HostStorage> host;
    std::vector<int64_t> sizes, strides;
    int64_t offset = 0;
    at::ScalarType dtype = at::kFloat;
    int64_t round_seen = -1;  // the host's restore round in which this view was last unpacked

    void attach(std::shared_ptr<HostStorage> h) {
      std::lock_guard<std::mutex> lock(h->mu);
      ++h->live_views;
      host = std::move(h);
    }
    ~Packed() {
      if (!host) return;
      std::lock_guard<std::mutex> lock(host->mu);
      --host->live_views;
      if (round_seen == host->round) --host->seen_in_round;
      host->settle();
    }
  };

  // Drops map entries whose source storage or host copy is gone (caller holds `mu`).
  void purge() {
    for (auto it = by_storage.begin(); it != by_storage.end();)
      it = it->second.source.expired() || it->second.host.expired() ? by_storage.erase(it) : std::next(it);
  }

  void add_host_bytes(int64_t n) {
    const int64_t now = counters.host_bytes.fetch_add(n) + n;
    int64_t peak = counters.host_bytes_peak.load();
    while (now > peak && !counters.host_bytes_peak.compare_exchange_weak(peak, now)) {
    }
  }
};

// ---------------------------------------------------------------------------------------------

void OffloadOptions::validate() const {
  TORCH_CHECK(min_bytes_ >= 0, "OffloadOptions: min_bytes must be >= 0, got ", min_bytes_);
  TORCH_CHECK(pool_max_cached_bytes_ >= 0, "OffloadOptions: pool_max_cached_bytes must be >= 0, got ",
              pool_max_cached_bytes_);
}

std::string OffloadStats::to_string() const {
  std::ostringstream s;
  auto mib = [](int64_t b) { return static_cast<double>(b) / (1 << 20); };
  s << std::fixed << std::setprecision(1) << "packed " << tensors_packed << " (offloaded " << tensors_offloaded
    << "), unpacked " << tensors_unpacked << "; copied " << storages_copied << " storages, " << mib(bytes_offloaded)
    << " MiB to host; de-dup avoided " << copies_avoided << " copies, " << mib(bytes_not_copied) << " MiB; restored "
    << mib(bytes_restored) << " MiB (" << restores_shared << " shared); host " << mib(host_bytes) << " MiB (peak "
    << mib(host_bytes_peak) << "); pool " << pool_hits << " hits, " << pool_misses << " misses, "
    << mib(pool_cached_bytes) << " MiB cached";
  return s.str();
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
  const bool device_ok = tensor.defined() && (tensor.is_cuda() || (tensor.is_cpu() && options_.host_to_host()));
  const bool plain = device_ok && tensor.layout() == at::kStrided && !tensor.is_quantized() && !tensor.is_nested() &&
                     !tensor.is_conj() && !tensor.is_neg() && tensor.has_storage() &&
                     !tensor.unsafeGetTensorImpl()->is_wrapped_number() && tensor.numel() > 0;
  if (!plain || tensor.numel() * static_cast<int64_t>(tensor.element_size()) < options_.min_bytes()) {
    packed->kept = tensor;
    return packed;
  }
  const c10::Storage& storage = tensor.storage();
  const auto nbytes = static_cast<int64_t>(storage.nbytes());
  const int64_t version = tensor._version();
  packed->sizes = tensor.sizes().vec();
  packed->strides = tensor.strides().vec();
  packed->offset = tensor.storage_offset();
  packed->dtype = tensor.scalar_type();

  std::lock_guard<std::mutex> lock(st.mu);
  st.purge();
  const c10::StorageImpl* key = storage.unsafeGetStorageImpl();
  if (options_.dedup()) {
    auto it = st.by_storage.find(key);
    if (it != st.by_storage.end()) {
      auto host = it->second.host.lock();
      // Same storage, same contents (no in-place write since the copy), same size: reuse.
      if (host && host->version == version && host->nbytes == nbytes && host->device == tensor.device()) {
        st.counters.copies_avoided.fetch_add(1);
        st.counters.bytes_not_copied.fetch_add(nbytes);
        st.counters.tensors_offloaded.fetch_add(1);
        packed->attach(std::move(host));
        return packed;
      }
    }
  }

  auto host = std::make_shared<State::HostStorage>();
  host->state = state_;
  host->nbytes = nbytes;
  host->device = tensor.device();
  host->version = version;
  host->pinned = tensor.is_cuda() && options_.pin_memory();
  bool hit = false;
  host->buffer = st.pool.acquire(nbytes, host->pinned, &hit);
  (hit ? st.counters.pool_hits : st.counters.pool_misses).fetch_add(1);
  st.add_host_bytes(host->buffer.numel());
  auto source = storage_bytes(storage, tensor.device());
  auto dst = host->buffer.narrow(0, 0, nbytes);
  if (tensor.is_cuda()) {
#if defined(EDKM_WITH_CUDA)
    const c10::cuda::CUDAGuard device_guard(tensor.device());
    if (options_.async() && host->pinned) {
      // The side stream waits for the producer of `tensor`, copies, and records `copied`.
      auto current = c10::cuda::getCurrentCUDAStream();
      auto side = c10::cuda::getStreamFromPool(false, tensor.device().index());
      c10::cuda::CUDAEvent produced;
      produced.record(current);
      produced.block(side);
      {
        const c10::cuda::CUDAStreamGuard stream_guard(side);
        dst.copy_(source, /*non_blocking=*/true);
      }
      host->copied.record(side);
      host->copy_pending = true;
      // The caching allocator must not reuse the source memory before the side stream has read it,
      // even if the tensor is freed right after pack (that is the point of offloading).
      c10::cuda::CUDACachingAllocator::recordStream(source.storage().data_ptr(), side);
    } else {
      dst.copy_(source);
    }
#else
    TORCH_CHECK(false, "Offloader: a CUDA tensor was saved but edkm was built without CUDA");
#endif
  } else {
    dst.copy_(source);
  }
  st.counters.storages_copied.fetch_add(1);
  st.counters.bytes_offloaded.fetch_add(nbytes);
  st.counters.tensors_offloaded.fetch_add(1);
  if (options_.dedup()) {
    st.by_storage.erase(key);  // a stale entry (the storage was written in place since)
    st.by_storage.emplace(key, State::Entry{storage.getWeakStorageImpl(), host});
  }
  packed->attach(std::move(host));
  return packed;
}

at::Tensor Offloader::unpack(const std::any& value) {
  const auto* p = std::any_cast<std::shared_ptr<State::Packed>>(&value);
  TORCH_CHECK(p && *p, "Offloader::unpack: the value was not packed by an edkm::Offloader (or was moved from)");
  State::Packed& packed = **p;
  state_->counters.tensors_unpacked.fetch_add(1);
  if (!packed.host) return packed.kept;
  auto& host = *packed.host;
  TORCH_CHECK(host.buffer.defined(), "Offloader::unpack: the host copy of this saved tensor was freed");
  std::lock_guard<std::mutex> lock(host.mu);
  at::Tensor device_bytes;
  if (host.restored) {
    if (auto impl = host.restored->lock()) {
      device_bytes = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(host.device));
      device_bytes.set_(c10::Storage(std::move(impl)), 0, {host.nbytes}, {1});
      state_->counters.restores_shared.fetch_add(1);
      if (packed.round_seen != host.round) {
        packed.round_seen = host.round;
        ++host.seen_in_round;
      }
      host.settle();
    }
  }
  if (!device_bytes.defined()) {
    device_bytes = at::empty({host.nbytes}, at::TensorOptions().dtype(at::kByte).device(host.device));
    auto src = host.buffer.narrow(0, 0, host.nbytes);
    if (host.device.is_cuda()) {
#if defined(EDKM_WITH_CUDA)
      const c10::cuda::CUDAGuard device_guard(host.device);
      if (host.copy_pending) host.copied.block(c10::cuda::getCurrentCUDAStream());  // after the copy to host
      device_bytes.copy_(src, /*non_blocking=*/host.pinned);
      host.restore_read.record(c10::cuda::getCurrentCUDAStream());
#endif
    } else {
      device_bytes.copy_(src);
    }
    host.restored = device_bytes.storage().getWeakStorageImpl();
    state_->counters.bytes_restored.fetch_add(host.nbytes);
    ++host.round;
    packed.round_seen = host.round;
    host.seen_in_round = 1;
    host.keep = device_bytes;
    host.settle();
  }
  auto out = at::empty({0}, at::TensorOptions().dtype(packed.dtype).device(host.device));
  out.set_(device_bytes.storage(), packed.offset, packed.sizes, packed.strides);
  return out;
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
  s.pool_cached_bytes = state_->pool.cached_bytes();
  return s;
}

void Offloader::reset_stats() {
  auto& c = state_->counters;
  for (auto* a :
       {&c.tensors_packed, &c.tensors_offloaded, &c.tensors_unpacked, &c.storages_copied, &c.bytes_offloaded,
        &c.copies_avoided, &c.bytes_not_copied, &c.bytes_restored, &c.restores_shared, &c.pool_hits, &c.pool_misses})
    a->store(0);
  c.host_bytes_peak.store(c.host_bytes.load());
}

void Offloader::empty_pool() { state_->pool.clear(); }

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
