// Host memory pool: free lists per size class over cudaHostAlloc (CUDA present) or aligned
// host memory. The state is shared with every block handed out, so blocks outliving the pool
// object still have somewhere to go.
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include "edkm/host_pool.h"
#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

namespace edkm {
namespace detail {

struct HostPoolState {
  HostMemoryPoolOptions options;
  bool pinned = false;
  bool closed = false;  // the pool object is gone: released blocks go to the system
  mutable std::mutex mu;
  std::map<size_t, std::vector<void*>> free_lists;  // capacity -> blocks
  HostPoolStats stats;

  void* system_alloc(size_t bytes) {
#if defined(EDKM_WITH_CUDA)
    if (pinned) {
      void* p = nullptr;
      C10_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocDefault));
      return p;
    }
#endif
    void* p = std::aligned_alloc(static_cast<size_t>(options.alignment()), bytes);
    TORCH_CHECK(p != nullptr, "edkm: HostMemoryPool: out of host memory allocating ", bytes, " bytes");
    return p;
  }

  void system_free(void* p) {
#if defined(EDKM_WITH_CUDA)
    if (pinned) {
      C10_CUDA_CHECK_WARN(cudaFreeHost(p));
      return;
    }
#endif
    std::free(p);
  }

  // Called with `mu` held.
  void raise_peaks() {
    stats.peak_reserved_bytes = std::max(stats.peak_reserved_bytes, stats.reserved_bytes);
    stats.peak_in_use_bytes = std::max(stats.peak_in_use_bytes, stats.in_use_bytes);
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
      free_lists[capacity].push_back(p);
      stats.cached_bytes += cap;
      ++stats.cached_blocks;
      return;
    }
    stats.reserved_bytes -= cap;
    ++stats.system_frees;
    lock.unlock();
    system_free(p);
  }

  void free_cached() {
    std::vector<void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (auto& [cap, list] : free_lists) {
        blocks.insert(blocks.end(), list.begin(), list.end());
        stats.reserved_bytes -= static_cast<int64_t>(cap * list.size());
        stats.system_frees += static_cast<int64_t>(list.size());
      }
      free_lists.clear();
      stats.cached_bytes = 0;
      stats.cached_blocks = 0;
    }
    for (void* p : blocks) system_free(p);
  }
};

}  // namespace detail

void HostMemoryPoolOptions::validate() const {
  const int64_t a = alignment();
  TORCH_CHECK(a >= 16 && a <= 65536 && (a & (a - 1)) == 0,
              "edkm: HostMemoryPoolOptions: alignment must be a power of two in [16, 65536], got ", a);
  TORCH_CHECK(max_cached_bytes() >= 0, "edkm: HostMemoryPoolOptions: max_cached_bytes must be >= 0, got ",
              max_cached_bytes());
}

std::string HostPoolStats::to_string() const {
  std::ostringstream s;
  auto mib = [](int64_t b) { return static_cast<double>(b) / (1 << 20); };
  s << "host pool: reserved " << mib(reserved_bytes) << " MiB (peak " << mib(peak_reserved_bytes) << "), in use "
    << mib(in_use_bytes) << " MiB (peak " << mib(peak_in_use_bytes) << ", requested " << mib(requested_bytes)
    << "), cached " << mib(cached_bytes) << " MiB in " << cached_blocks << " blocks, hits " << hits << ", misses "
    << misses << ", system frees " << system_frees;
  return s.str();
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

bool HostMemoryPool::Block::pinned() const { return pool_ && pool_->pinned; }

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
#if defined(EDKM_WITH_CUDA)
  state_->pinned = options.pinned() && c10::cuda::device_count() > 0;
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
  constexpr size_t kSmall = 512, kMedium = size_t{1} << 20;
  if (bytes <= kSmall) return kSmall;
  size_t p = kSmall;
  while (p < bytes) p <<= 1;
  if (p <= kMedium) return p;
  const size_t step = p / 8;
  return (bytes + step - 1) / step * step;
}

HostMemoryPool::Block HostMemoryPool::allocate(size_t bytes) {
  Block b;
  if (bytes == 0) return b;
  const auto align = static_cast<size_t>(state_->options.alignment());
  const size_t cap = (size_class(bytes) + align - 1) / align * align;
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto it = state_->free_lists.find(cap);
    if (it != state_->free_lists.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      state_->stats.cached_bytes -= static_cast<int64_t>(cap);
      --state_->stats.cached_blocks;
      ++state_->stats.hits;
    }
  }
  const bool hit = p != nullptr;
  if (!hit) p = state_->system_alloc(cap);  // outside the lock: cudaHostAlloc is slow
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

const HostMemoryPoolOptions& HostMemoryPool::options() const { return state_->options; }

}  // namespace edkm
