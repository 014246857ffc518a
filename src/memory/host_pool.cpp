// Host memory pool: free lists per size class over cudaHostAlloc (CUDA present) or aligned
// host memory. The state is shared with every block handed out, so blocks outliving the pool
// object still have somewhere to go.
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <sstream>
#include <unordered_set>
#include <vector>

#include "edkm/memory/host_pool.h"
#include "memory/host_pool_counter.h"
#include "memory/peak.h"
#include "util/format.h"
#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

namespace edkm {
namespace detail {

std::atomic<int64_t> g_reserved{0}, g_reserved_peak{0};  // every pool of the process

void count_reserved(int64_t delta) { add_to_current(g_reserved, g_reserved_peak, delta); }

int64_t host_pools_reserved_bytes() { return g_reserved.load(); }
int64_t host_pools_peak_reserved_bytes() { return g_reserved_peak.load(); }
void reset_host_pools_peak() { g_reserved_peak.store(g_reserved.load()); }

struct HostPoolState {
  HostMemoryPoolOptions options;
  bool pinned = false;
  bool closed = false;  // the pool object is gone: released blocks go to the system
  bool counted = true;  // in the process-wide count of host pool bytes
  mutable std::mutex mu;
  struct Cached {
    void* p;
    uint64_t released;  // release order, for peak_bound's evictions
  };
  std::map<size_t, std::deque<Cached>> free_lists;  // capacity -> blocks, most recently released last
  std::unordered_set<void*> pageable;               // a pinned pool's fallback blocks
  HostPoolStats stats;
  uint64_t releases = 0;
  int64_t high_water = 0;  // peak_bound: most bytes in use since the cache was last emptied

  // Page-locked memory, or nullptr when the allocator cannot give it (its error is swallowed:
  // the caller falls back).
  void* pinned_alloc(size_t bytes, std::string& why) {
    const auto& custom = options.pinned_allocator();
    try {
      if (custom.alloc) {
        void* p = custom.alloc(bytes);
        if (p == nullptr) why = "the pinned allocator returned nullptr";
        return p;
      }
#if defined(EDKM_WITH_CUDA)
      void* p = nullptr;
      const cudaError_t rc = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
      if (rc == cudaSuccess) return p;
      (void)cudaGetLastError();  // not sticky: clear it
      why = std::string("cudaHostAlloc: ") + cudaGetErrorString(rc);
#else
      why = "this build of edkm has no CUDA";
#endif
    } catch (const std::exception& e) {
      why = e.what();
    }
    return nullptr;
  }

  void count(int64_t delta) const {
    if (counted) count_reserved(delta);
  }

  void* system_alloc(size_t bytes) {
    if (pinned) {
      std::string why;
      if (void* p = pinned_alloc(bytes, why)) {
        count(static_cast<int64_t>(bytes));
        return p;
      }
      TORCH_WARN_ONCE("edkm: HostMemoryPool: page-locked allocation of ", bytes, " bytes failed (", why,
                      "); using ordinary host memory for such blocks: their copies to and from the GPU are "
                      "synchronous (HostPoolStats::pinned_fallbacks counts them)");
      void* p = pageable_alloc(bytes);
      std::lock_guard<std::mutex> lock(mu);
      pageable.insert(p);
      ++stats.pinned_fallbacks;
      count(static_cast<int64_t>(bytes));
      return p;
    }
    void* p = pageable_alloc(bytes);
    count(static_cast<int64_t>(bytes));
    return p;
  }

  // Aligned host memory; when the system has none, the cached blocks go back to it and the request
  // is tried once more before it fails. Called without `mu` held.
  void* pageable_alloc(size_t bytes) {
    const auto align = static_cast<size_t>(options.alignment());
    void* p = std::aligned_alloc(align, bytes);
    if (p != nullptr) return p;
    int64_t cached = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      cached = stats.cached_bytes;
    }
    if (cached > 0) {
      free_cached();
      p = std::aligned_alloc(align, bytes);
    }
    TORCH_CHECK(p != nullptr, "edkm: HostMemoryPool: out of host memory allocating ", bytes, " bytes",
                cached > 0 ? " (also after returning the pool's " + std::to_string(cached) + " cached bytes)" : "");
    return p;
  }

  void system_free(void* p, size_t bytes) {
    count(-static_cast<int64_t>(bytes));
    if (pinned && !is_fallback(p, /*forget=*/true)) {
      const auto& custom = options.pinned_allocator();
      if (custom.free) {
        custom.free(p);
        return;
      }
#if defined(EDKM_WITH_CUDA)
      C10_CUDA_CHECK_WARN(cudaFreeHost(p));
#endif
      return;
    }
    std::free(p);
  }

  bool is_fallback(void* p, bool forget) {
    std::lock_guard<std::mutex> lock(mu);
    if (pageable.empty()) return false;
    return forget ? pageable.erase(p) > 0 : pageable.count(p) > 0;
  }

  // Called with `mu` held.
  void raise_peaks() {
    stats.peak_reserved_bytes = std::max(stats.peak_reserved_bytes, stats.reserved_bytes);
    stats.peak_in_use_bytes = std::max(stats.peak_in_use_bytes, stats.in_use_bytes);
    high_water = std::max(high_water, stats.in_use_bytes);
  }

  // peak_bound, before a miss of `cap` bytes: takes the least recently released cached blocks out
  // of the free lists until in use + cap + cached <= peak_bound x max(high water, in use + cap);
  // the caller returns them to the system outside the lock. Called with `mu` held.
  void evict_for(int64_t cap, std::vector<std::pair<void*, size_t>>& out) {
    const int64_t after = stats.in_use_bytes + cap;
    const double bound = options.peak_bound() * static_cast<double>(std::max(high_water, after));
    if (bound >= 0x1p62) return;  // no host holds that much: nothing to evict
    const int64_t allowed = static_cast<int64_t>(bound) - after;
    while (stats.cached_bytes > allowed) {
      auto oldest = free_lists.end();
      for (auto it = free_lists.begin(); it != free_lists.end(); ++it) {
        if (!it->second.empty() &&
            (oldest == free_lists.end() || it->second.front().released < oldest->second.front().released))
          oldest = it;
      }
      if (oldest == free_lists.end()) break;
      out.emplace_back(oldest->second.front().p, oldest->first);
      oldest->second.pop_front();
      const auto c = static_cast<int64_t>(oldest->first);
      stats.cached_bytes -= c;
      stats.reserved_bytes -= c;
      --stats.cached_blocks;
      ++stats.system_frees;
      ++stats.evictions;
      if (oldest->second.empty()) free_lists.erase(oldest);
    }
  }

  void give_back(void* p, size_t size, size_t capacity) {
    std::unique_lock<std::mutex> lock(mu);
    const auto cap = static_cast<int64_t>(capacity);
    stats.in_use_bytes -= cap;
    stats.requested_bytes -= static_cast<int64_t>(size);
    --stats.blocks_in_use;
    const bool keep =
        !closed && (options.max_cached_bytes() == 0 || stats.cached_bytes + cap <= options.max_cached_bytes());
    if (keep) {
      free_lists[capacity].push_back(Cached{p, releases++});
      stats.cached_bytes += cap;
      ++stats.cached_blocks;
      return;
    }
    stats.reserved_bytes -= cap;
    ++stats.system_frees;
    lock.unlock();
    system_free(p, capacity);
  }

  void free_cached() {
    std::vector<std::pair<void*, size_t>> blocks;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (auto& [cap, list] : free_lists) {
        for (const Cached& c : list) blocks.emplace_back(c.p, cap);
        stats.reserved_bytes -= static_cast<int64_t>(cap * list.size());
        stats.system_frees += static_cast<int64_t>(list.size());
      }
      free_lists.clear();
      stats.cached_bytes = 0;
      stats.cached_blocks = 0;
      high_water = stats.in_use_bytes;
    }
    for (const auto& [p, cap] : blocks) system_free(p, cap);
  }
};

}  // namespace detail

void HostMemoryPoolOptions::validate() const {
  const int64_t a = alignment();
  TORCH_CHECK(a >= 16 && a <= 65536 && (a & (a - 1)) == 0,
              "edkm: HostMemoryPoolOptions: alignment must be a power of two in [16, 65536], got ", a);
  TORCH_CHECK(max_cached_bytes() >= 0, "edkm: HostMemoryPoolOptions: max_cached_bytes must be >= 0, got ",
              max_cached_bytes());
  TORCH_CHECK(peak_bound() == 0 || (peak_bound() >= 1 && std::isfinite(peak_bound())),
              "edkm: HostMemoryPoolOptions: peak_bound must be 0 or a finite number >= 1, got ", peak_bound());
}

std::string HostPoolStats::to_string() const {
  using detail::mib;
  std::string s = fmt::format(
      "host pool: reserved {} (peak {}), in use {} (peak {}, requested {}), cached {} in {} blocks, hits {}, misses "
      "{}, "
      "system frees {}",
      mib(reserved_bytes), mib(peak_reserved_bytes), mib(in_use_bytes), mib(peak_in_use_bytes), mib(requested_bytes),
      mib(cached_bytes), cached_blocks, hits, misses, system_frees);
  if (evictions > 0) s += fmt::format(", {} evicted to stay within the peak", evictions);
  if (pinned_fallbacks > 0) s += fmt::format(", {} blocks not page-locked (allocation failed)", pinned_fallbacks);
  return s;
}

// --- Block --------------------------------------------------------------------------------------

HostMemoryPool::Block::~Block() { release(); }

HostMemoryPool::Block::Block(Block&& other) noexcept
    : pool_(std::move(other.pool_)),
      data_(other.data_),
      size_(other.size_),
      capacity_(other.capacity_),
      reused_(other.reused_) {
  other.data_ = nullptr;
  other.reused_ = false;
  other.size_ = other.capacity_ = 0;
}

HostMemoryPool::Block& HostMemoryPool::Block::operator=(Block&& other) noexcept {
  if (this != &other) {
    release();
    pool_ = std::move(other.pool_);
    data_ = other.data_;
    size_ = other.size_;
    capacity_ = other.capacity_;
    reused_ = other.reused_;
    other.data_ = nullptr;
    other.size_ = other.capacity_ = 0;
    other.reused_ = false;
  }
  return *this;
}

bool HostMemoryPool::Block::pinned() const {
  return pool_ && pool_->pinned && data_ != nullptr && !pool_->is_fallback(data_, /*forget=*/false);
}

void HostMemoryPool::Block::release() {
  if (data_ != nullptr) pool_->give_back(data_, size_, capacity_);
  data_ = nullptr;
  size_ = capacity_ = 0;
  reused_ = false;
  pool_.reset();
}

// --- HostMemoryPool -----------------------------------------------------------------------------

HostMemoryPool::HostMemoryPool(HostMemoryPoolOptions options) : state_(std::make_shared<detail::HostPoolState>()) {
  options.validate();
  state_->options = options;
  state_->pinned = options.pinned() && static_cast<bool>(options.pinned_allocator().alloc);
#if defined(EDKM_WITH_CUDA)
  state_->pinned = state_->pinned || (options.pinned() && c10::cuda::device_count() > 0);
#endif
}

HostMemoryPool::~HostMemoryPool() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->closed = true;
  }
  state_->free_cached();
}

size_t HostMemoryPool::size_class(size_t bytes) {
  constexpr size_t kSmall = 512, kMedium = size_t{1} << 20, kHuge = size_t{1} << 62;
  if (bytes <= kSmall) return kSmall;
  if (bytes > kHuge) return bytes;  // no host has it (allocate refuses it); the doubling below would overflow
  size_t p = kSmall;
  while (p < bytes) p <<= 1;
  if (p <= kMedium) return p;
  const size_t step = p / 8;
  return (bytes + step - 1) / step * step;
}

HostMemoryPool::Block HostMemoryPool::allocate(size_t bytes) {
  Block b;
  if (bytes == 0) return b;
  TORCH_CHECK(bytes <= (size_t{1} << 62), "edkm: HostMemoryPool: a request of ", bytes,
              " bytes is beyond any host memory");
  const auto align = static_cast<size_t>(state_->options.alignment());
  const size_t cap = (size_class(bytes) + align - 1) / align * align;
  void* p = nullptr;
  std::vector<std::pair<void*, size_t>> evicted;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto it = state_->free_lists.find(cap);
    if (it != state_->free_lists.end() && !it->second.empty()) {
      p = it->second.back().p;
      it->second.pop_back();
      if (it->second.empty()) state_->free_lists.erase(it);
      state_->stats.cached_bytes -= static_cast<int64_t>(cap);
      --state_->stats.cached_blocks;
      ++state_->stats.hits;
    } else if (state_->options.peak_bound() > 0) {
      state_->evict_for(static_cast<int64_t>(cap), evicted);
    }
  }
  const bool hit = p != nullptr;
  // Outside the lock: cudaHostAlloc is slow. The evicted blocks go first, so that the process
  // does not hold both.
  for (const auto& [q, c] : evicted) state_->system_free(q, c);
  if (!hit) p = state_->system_alloc(cap);
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (!hit) {
      ++state_->stats.misses;
      state_->stats.reserved_bytes += static_cast<int64_t>(cap);
    }
    state_->stats.in_use_bytes += static_cast<int64_t>(cap);
    state_->stats.requested_bytes += static_cast<int64_t>(bytes);
    ++state_->stats.blocks_in_use;
    state_->raise_peaks();
  }
  b.pool_ = state_;
  b.data_ = p;
  b.size_ = bytes;
  b.capacity_ = cap;
  b.reused_ = hit;
  return b;
}

namespace {
int64_t checked_numel(at::IntArrayRef sizes, const char* what) {
  int64_t numel = 1;
  for (int64_t s : sizes) {
    TORCH_CHECK(s >= 0, "edkm: HostMemoryPool::", what, ": negative size in ", sizes);
    numel *= s;
  }
  return numel;
}
}  // namespace

at::Tensor HostMemoryPool::empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  const int64_t numel = checked_numel(sizes, "empty");
  return wrap(allocate(static_cast<size_t>(numel) * c10::elementSize(dtype)), sizes, dtype);
}

at::Tensor HostMemoryPool::wrap(Block block, at::IntArrayRef sizes, at::ScalarType dtype) {
  const size_t bytes = static_cast<size_t>(checked_numel(sizes, "wrap")) * c10::elementSize(dtype);
  TORCH_CHECK(block.size() >= bytes, "edkm: HostMemoryPool::wrap: the block has ", block.size(), " bytes but ", sizes,
              " x ", dtype, " needs ", bytes);
  auto owner = std::make_shared<Block>(std::move(block));
  void* data = owner->data();
  static char empty_storage;  // a non-null address for zero-element tensors
  return at::from_blob(
      data ? data : &empty_storage, sizes, [owner](void*) { owner->release(); },
      at::TensorOptions().dtype(dtype).device(at::kCPU));
}

at::Tensor HostMemoryPool::empty_like(const at::Tensor& src) {
  TORCH_CHECK(src.defined(), "edkm: HostMemoryPool::empty_like: source tensor is undefined");
  return empty(src.sizes(), src.scalar_type());
}

void HostMemoryPool::empty_cache() { state_->free_cached(); }

HostPoolStats HostMemoryPool::stats() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->stats;
}

void HostMemoryPool::reset_peak_stats() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->stats.peak_reserved_bytes = state_->stats.reserved_bytes;
  state_->stats.peak_in_use_bytes = state_->stats.in_use_bytes;
}

bool HostMemoryPool::pinned() const { return state_->pinned; }

void detail::HostPoolAccess::leave_out_of_host_pool_count(HostMemoryPool& pool) {
  std::lock_guard<std::mutex> lock(pool.state_->mu);
  TORCH_CHECK(pool.state_->stats.reserved_bytes == 0, "edkm: internal: the pool already holds memory");
  pool.state_->counted = false;
}

const HostMemoryPoolOptions& HostMemoryPool::options() const { return state_->options; }

}  // namespace edkm
