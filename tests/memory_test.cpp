// edkm/memory/memory.h: the counting CPU allocator and MemoryMeter.
#include <c10/core/CPUAllocator.h>
#include <edkm/memory/memory.h>

#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "test_util.h"

namespace edkm {
namespace {

TEST(MemoryMeter, CpuTensorIsCountedExactly) {
  MemoryMeter meter;
  const int64_t bytes = 1000 * 1000 * 4;
  {
    auto t = at::empty({1000, 1000}, at::kFloat);
    auto r = meter.report();
    EXPECT_EQ(r.cpu.current_delta(), bytes);
    EXPECT_EQ(r.cpu.peak_delta(), bytes);
  }
  auto r = meter.report();
  EXPECT_EQ(r.cpu.current_delta(), 0);
  EXPECT_EQ(r.cpu.peak_delta(), bytes);
}

TEST(MemoryMeter, NestedMetersKeepOuterPeak) {
  MemoryMeter outer;
  { auto big = at::empty({4 << 20}, at::kByte); }
  {
    MemoryMeter inner;
    auto small = at::empty({1 << 20}, at::kByte);
    EXPECT_EQ(inner.report().cpu.peak_delta(), 1 << 20);
  }
  EXPECT_EQ(outer.report().cpu.peak_delta(), 4 << 20);
  {
    MemoryMeter inner;
    auto bigger = at::empty({8 << 20}, at::kByte);
  }
  EXPECT_EQ(outer.report().cpu.peak_delta(), 8 << 20);
}

TEST(MemoryMeter, CountsOtherThreadsAndViewsDoNotAllocate) {
  MemoryMeter meter;
  std::thread th([] { auto t = at::empty({256, 1024}, at::kDouble); });
  th.join();
  EXPECT_EQ(meter.report().cpu.peak_delta(), 256 * 1024 * 8);
  auto t = at::zeros({1024}, at::kFloat);
  auto before = meter.report().cpu.current;
  auto v = t.view({32, 32}).transpose(0, 1);
  EXPECT_EQ(meter.report().cpu.current, before);
  EXPECT_FALSE(meter.report().to_string().empty());
}

TEST(MemoryMeter, RawAllocateAndDeallocateAreCounted) {
  install_cpu_memory_counter();  // dropout's CPU kernel frees through raw_deallocate
  c10::Allocator* a = c10::GetCPUAllocator();
  ASSERT_NE(a->raw_deleter(), nullptr);
  const int64_t before = cpu_bytes_in_use();
  void* p = a->raw_allocate(4096);
  EXPECT_EQ(cpu_bytes_in_use(), before + 4096);
  a->raw_deallocate(p);
  EXPECT_EQ(cpu_bytes_in_use(), before);
}

TEST(MemoryMeter, CudaTensorIsCountedExactly) {
  EDKM_SKIP_WITHOUT_GPU();
  MemoryMeter meter;
  const int64_t bytes = 2 << 20;  // a multiple of the caching allocator's 512-byte rounding
  {
    auto t = at::empty({bytes / 4}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
    EXPECT_EQ(meter.report().cuda.current_delta(), bytes);
  }
  EXPECT_EQ(meter.report().cuda.peak_delta(), bytes);
  EXPECT_EQ(meter.report().cuda.current_delta(), 0);
  {
    auto pinned = at::empty({1 << 20}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    EXPECT_GE(meter.report().pinned.peak_delta(), 1 << 20);
  }
}

// The caching CPU allocator: a large CPU tensor's block is reused by the next one of its size class,
// small ones go to LibTorch's allocator, MemoryMeter still counts requested bytes, and tensors
// outlive disabling it.
struct CachingOff {
  ~CachingOff() { disable_cpu_caching_allocator(); }
};

TEST(CpuCachingAllocator, ReusesLargeBlocksAndCountsAsBefore) {
  CachingOff off;
  enable_cpu_caching_allocator();
  ASSERT_TRUE(cpu_caching_allocator_enabled());
  MemoryMeter meter;
  void* first = nullptr;
  {
    auto t = at::empty({1 << 20}, at::kFloat);  // 4 MiB
    first = t.data_ptr();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 64, 0u);
    EXPECT_EQ(meter.report().cpu.current_delta(), 4 << 20);
    t.fill_(3.f);
    EXPECT_EQ(t.sum().item<float>(), 3.f * (1 << 20));
  }
  auto s = cpu_caching_allocator_stats();
  EXPECT_EQ(s.misses, 1);
  EXPECT_EQ(s.cached_blocks, 1);
  EXPECT_EQ(meter.report().cpu.current_delta(), 0);
  {
    auto t = at::empty({(1 << 20) - 100}, at::kFloat);  // same size class
    EXPECT_EQ(t.data_ptr(), first);
  }
  s = cpu_caching_allocator_stats();
  EXPECT_EQ(s.hits, 1);
  EXPECT_GE(meter.report().cpu.peak_delta(), 4 << 20);
  EXPECT_LT(meter.report().cpu.peak_delta(), (4 << 20) + 4096);  // + sum()'s scalars
  {
    auto small = at::empty({1000}, at::kFloat);  // below min_block_bytes
    EXPECT_EQ(meter.report().cpu.current_delta(), 4000);
  }
  EXPECT_EQ(cpu_caching_allocator_stats().hits + cpu_caching_allocator_stats().misses, 2);
  // The cache's bytes are not counted again among the host pools'.
  EXPECT_EQ(meter.report().host_pool.peak_delta(), 0);
  // raw_allocate goes through it too.
  c10::Allocator* a = c10::GetCPUAllocator();
  void* p = a->raw_allocate(4 << 20);
  EXPECT_EQ(p, first);
  a->raw_deallocate(p);
  cpu_caching_allocator_empty_cache();
  EXPECT_EQ(cpu_caching_allocator_stats().cached_bytes, 0);
  EXPECT_EQ(cpu_caching_allocator_stats().reserved_bytes, 0);
}

TEST(CpuCachingAllocator, TensorsOutliveDisablingAndThreadsShareIt) {
  CachingOff off;
  enable_cpu_caching_allocator(CpuCachingAllocatorOptions().min_block_bytes(64 << 10));
  auto kept = at::full({1 << 18}, 2.0, at::kDouble);  // 2 MiB from the cache
  EXPECT_EQ(cpu_caching_allocator_stats().blocks_in_use, 1);
  std::atomic<int64_t> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &wrong] {
      for (int i = 0; i < 200; ++i) {
        auto x = at::full({(16 + (i + t) % 7) << 10}, static_cast<float>(t), at::kFloat);
        if (x.sum().item<double>() != static_cast<double>(t) * x.numel()) ++wrong;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  const auto s = cpu_caching_allocator_stats();
  EXPECT_GT(s.hits, 700);  // 800 allocations over 7 sizes and 4 threads
  EXPECT_EQ(s.blocks_in_use, 1);
  disable_cpu_caching_allocator();
  EXPECT_FALSE(cpu_caching_allocator_enabled());
  EXPECT_EQ(cpu_caching_allocator_stats().hits, 0);
  EXPECT_EQ(kept.sum().item<double>(), 2.0 * (1 << 18));
  const int64_t before = cpu_bytes_in_use();
  kept.reset();  // its block goes to the system now
  EXPECT_EQ(cpu_bytes_in_use(), before - (2 << 20));
  EXPECT_THROW(enable_cpu_caching_allocator(CpuCachingAllocatorOptions().min_block_bytes(-1)), c10::Error);
  EXPECT_THROW(enable_cpu_caching_allocator(CpuCachingAllocatorOptions().max_cached_bytes(-5)), c10::Error);
  EXPECT_THROW(enable_cpu_caching_allocator(CpuCachingAllocatorOptions().peak_bound(0.9)), c10::Error);
  EXPECT_THROW(enable_cpu_caching_allocator(CpuCachingAllocatorOptions().peak_bound(INFINITY)), c10::Error);
  EXPECT_THROW(enable_cpu_caching_allocator(CpuCachingAllocatorOptions().peak_bound(NAN)), c10::Error);
  EXPECT_FALSE(cpu_caching_allocator_enabled());
}

}  // namespace
}  // namespace edkm
