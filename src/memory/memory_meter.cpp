// Counting (and optionally caching) CPU allocator and the RAII MemoryMeter.
//
// Peaks nest without per-allocation bookkeeping of every meter: a meter resets the global peak
// counters when it starts, after handing the peak seen so far to its enclosing meter, so an
// outer meter's peak is max(what it was handed, the global peak now).
#include <ATen/Context.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "edkm/memory/memory.h"
#include "memory/host_pool_counter.h"
#include "memory/peak.h"
#include "util/format.h"
#if defined(EDKM_WITH_CUDA)
#include <ATen/core/CachingHostAllocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace edkm {
namespace {

std::atomic<int64_t> g_cpu_current{0};
std::atomic<int64_t> g_cpu_peak{0};

// Wraps LibTorch's CPU allocator, counts what it hands out and, with caching enabled, serves
// large requests from a HostMemoryPool. The DataPtr keeps context == data (a "simple" data
// pointer, as copy-on-write storage expects); the wrapped allocation or pool block lives in a side
// table.
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return base_->allocate(n);
    std::shared_ptr<HostMemoryPool> cache;
    if (caching_.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> lock(mu_);
      if (cache_ && n >= min_block_) cache = cache_;
    }
    Entry e;
    e.bytes = n;
    void* data = nullptr;
    if (cache) {
      e.block = cache->allocate(n);
      data = e.block.data();
    } else {
      e.inner = base_->allocate(n);
      data = e.inner.get();
      if (data == nullptr) return std::move(e.inner);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_.emplace(data, std::move(e));
    }
    detail::add_to_current(g_cpu_current, g_cpu_peak, static_cast<int64_t>(n));
    return {data, data, &CountingAllocator::release, c10::Device(c10::kCPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
  // Every non-empty allocation carries `release` (raw_allocate / raw_deallocate, used e.g. by
  // dropout's kernels, need it).
  c10::DeleterFnPtr raw_deleter() const override { return &CountingAllocator::release; }

  // nullptr: no caching. The previous pool is emptied; its blocks in use go to the system when
  // released (the pool object is gone).
  void set_cache(std::shared_ptr<HostMemoryPool> cache, size_t min_block) {
    std::shared_ptr<HostMemoryPool> old;
    {
      std::lock_guard<std::mutex> lock(mu_);
      old = std::move(cache_);
      cache_ = std::move(cache);
      min_block_ = min_block;
      caching_.store(cache_ != nullptr, std::memory_order_release);
    }
  }
  std::shared_ptr<HostMemoryPool> cache() {
    std::lock_guard<std::mutex> lock(mu_);
    return cache_;
  }

  static CountingAllocator* instance;

 private:
  struct Entry {
    c10::DataPtr inner;           // from the wrapped allocator, or
    HostMemoryPool::Block block;  // from the cache
    size_t bytes = 0;
  };
  static void release(void* data) {
    Entry e;
    {
      std::lock_guard<std::mutex> lock(instance->mu_);
      auto it = instance->live_.find(data);
      if (it == instance->live_.end()) return;
      e = std::move(it->second);
      instance->live_.erase(it);
    }
    g_cpu_current.fetch_sub(static_cast<int64_t>(e.bytes));
    // e.inner frees the memory through the wrapped allocator, or e.block returns to its pool,
    // when it goes out of scope (outside the lock)
  }

  c10::Allocator* base_;
  std::mutex mu_;
  std::unordered_map<void*, Entry> live_;
  std::atomic<bool> caching_{false};
  std::shared_ptr<HostMemoryPool> cache_;
  size_t min_block_ = 0;
};
CountingAllocator* CountingAllocator::instance = nullptr;

std::mutex g_meter_mu;
MemoryMeter* g_top = nullptr;

bool cuda_present() {
#if defined(EDKM_WITH_CUDA)
  if (c10::cuda::device_count() == 0) return false;
  // The caching allocator's statistics exist once CUDA is initialised (lazily, by the first CUDA
  // op): a meter built before any CUDA work would otherwise throw on getDeviceStats.
  at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
  return true;
#else
  return false;
#endif
}

void read(int device, bool cuda, MemoryReport& r) {
  r.cpu.current = g_cpu_current.load();
  r.cpu.peak = g_cpu_peak.load();
  r.host_pool.current = detail::host_pools_reserved_bytes();
  r.host_pool.peak = detail::host_pools_peak_reserved_bytes();
  r.has_cuda = cuda;
#if defined(EDKM_WITH_CUDA)
  if (cuda) {
    auto s = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto& a = s.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
    r.cuda.current = a.current;
    r.cuda.peak = a.peak;
    auto h = at::getHostAllocator(at::kCUDA)->get_stats();
    r.pinned.current = h.active_bytes.current;
    r.pinned.peak = h.active_bytes.peak;
  }
#endif
}

void reset_peaks(int device, bool cuda) {
  g_cpu_peak.store(g_cpu_current.load());
  detail::reset_host_pools_peak();
#if defined(EDKM_WITH_CUDA)
  if (cuda) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
    at::getHostAllocator(at::kCUDA)->reset_peak_stats();
  }
#endif
}

}  // namespace

void install_cpu_memory_counter() {
  static std::once_flag once;
  std::call_once(once, [] {
    CountingAllocator::instance = new CountingAllocator(c10::GetCPUAllocator());  // never freed: outlives tensors
    c10::SetCPUAllocator(CountingAllocator::instance, /*priority=*/100);
  });
}

int64_t cpu_bytes_in_use() { return g_cpu_current.load(); }

void CpuCachingAllocatorOptions::validate() const {
  TORCH_CHECK(min_block_bytes() >= 0, "edkm: CpuCachingAllocatorOptions: min_block_bytes must be >= 0, got ",
              min_block_bytes());
  TORCH_CHECK(max_cached_bytes() >= 0, "edkm: CpuCachingAllocatorOptions: max_cached_bytes must be >= 0, got ",
              max_cached_bytes());
  TORCH_CHECK(peak_bound() == 0 || (peak_bound() >= 1 && std::isfinite(peak_bound())),
              "edkm: CpuCachingAllocatorOptions: peak_bound must be 0 (no bound) or a finite number >= 1, got ",
              peak_bound());
}

namespace {
// The caching allocator's pool, or nullptr when caching is off.
std::shared_ptr<HostMemoryPool> current_cache() {
  return CountingAllocator::instance != nullptr ? CountingAllocator::instance->cache() : nullptr;
}
}  // namespace

void enable_cpu_caching_allocator(CpuCachingAllocatorOptions options) {
  options.validate();
  install_cpu_memory_counter();
  // 64-byte alignment, as LibTorch's CPU allocator gives.
  auto pool = std::make_shared<HostMemoryPool>(HostMemoryPoolOptions()
                                                   .pinned(false)
                                                   .alignment(64)
                                                   .max_cached_bytes(options.max_cached_bytes())
                                                   .peak_bound(options.peak_bound()));
  detail::HostPoolAccess::leave_out_of_host_pool_count(*pool);
  CountingAllocator::instance->set_cache(std::move(pool),
                                         static_cast<size_t>(std::max<int64_t>(1, options.min_block_bytes())));
}

void disable_cpu_caching_allocator() {
  if (CountingAllocator::instance != nullptr) CountingAllocator::instance->set_cache(nullptr, 0);
}

bool cpu_caching_allocator_enabled() { return current_cache() != nullptr; }

HostPoolStats cpu_caching_allocator_stats() {
  const auto cache = current_cache();
  return cache ? cache->stats() : HostPoolStats{};
}

void cpu_caching_allocator_empty_cache() {
  if (const auto cache = current_cache()) cache->empty_cache();
}

MemoryMeter::MemoryMeter(int cuda_device) {
  install_cpu_memory_counter();
  has_cuda_ = cuda_present();
#if defined(EDKM_WITH_CUDA)
  device_ = cuda_device >= 0 ? cuda_device : (has_cuda_ ? c10::cuda::current_device() : 0);
#else
  device_ = cuda_device < 0 ? 0 : cuda_device;
#endif
  std::lock_guard<std::mutex> lock(g_meter_mu);
  parent_ = g_top;
  if (parent_ != nullptr) {  // hand every enclosing meter what it has seen so far
    MemoryReport now;
    read(device_, has_cuda_, now);
    for (MemoryMeter* m = parent_; m != nullptr; m = m->parent_) {
      m->carried_.cpu = std::max(m->carried_.cpu, now.cpu.peak);
      m->carried_.cuda = std::max(m->carried_.cuda, now.cuda.peak);
      m->carried_.pinned = std::max(m->carried_.pinned, now.pinned.peak);
      m->carried_.host_pool = std::max(m->carried_.host_pool, now.host_pool.peak);
    }
  }
  reset_peaks(device_, has_cuda_);
  read(device_, has_cuda_, start_);
  g_top = this;
}

MemoryMeter::~MemoryMeter() {
  std::lock_guard<std::mutex> lock(g_meter_mu);
  if (g_top == this) g_top = parent_;
}

MemoryReport MemoryMeter::report() const {
  MemoryReport r;
  read(device_, has_cuda_, r);
  r.cpu.start = start_.cpu.current;
  r.cuda.start = start_.cuda.current;
  r.pinned.start = start_.pinned.current;
  r.host_pool.start = start_.host_pool.current;
  r.cpu.peak = std::max(r.cpu.peak, carried_.cpu);
  r.cuda.peak = std::max(r.cuda.peak, carried_.cuda);
  r.pinned.peak = std::max(r.pinned.peak, carried_.pinned);
  r.host_pool.peak = std::max(r.host_pool.peak, carried_.host_pool);
  return r;
}

std::string MemoryReport::to_string() const {
  using detail::mib;
  std::string s = fmt::format("cpu peak +{}, now +{}", mib(cpu.peak_delta()), mib(cpu.current_delta()));
  if (has_cuda)
    s += fmt::format("; cuda peak +{}, now +{}; pinned peak +{}", mib(cuda.peak_delta()), mib(cuda.current_delta()),
                     mib(pinned.peak_delta()));
  if (host_pool.peak > 0)
    s += fmt::format("; host pools peak +{}, now +{}", mib(host_pool.peak_delta()), mib(host_pool.current_delta()));
  return s;
}

}  // namespace edkm
