// edkm/memory/host_pool.h: blocks are reused by size class, statistics add up, tensors return their
// block, pinned memory on a GPU machine.
#include <edkm/memory/host_pool.h>
#include <edkm/memory/memory.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>
#include <stdexcept>
#include <thread>

#include "test_util.h"

namespace edkm {
namespace {

TEST(HostMemoryPool, SizeClasses) {
  EXPECT_EQ(HostMemoryPool::size_class(1), 512u);
  EXPECT_EQ(HostMemoryPool::size_class(512), 512u);
  EXPECT_EQ(HostMemoryPool::size_class(513), 1024u);
  EXPECT_EQ(HostMemoryPool::size_class(1 << 20), size_t{1} << 20);
  EXPECT_EQ(HostMemoryPool::size_class((1 << 20) + 1), (size_t{1} << 20) + (size_t{1} << 18));  // 2 MiB / 8 steps
  for (size_t n : {size_t{3000}, size_t{5} << 20, size_t{123456789}}) {
    const size_t c = HostMemoryPool::size_class(n);
    EXPECT_GE(c, n);
    EXPECT_LE(c, n + n / 4 + 512) << n;  // at most 25% slack above 1 MiB
  }
}

TEST(HostMemoryPool, ReleasedBlocksAreReused) {
  HostMemoryPool pool(HostMemoryPoolOptions().pinned(false));
  EXPECT_FALSE(pool.pinned());
  void* first = nullptr;
  {
    auto b = pool.allocate(100000);
    ASSERT_TRUE(b);
    first = b.data();
    EXPECT_EQ(b.size(), 100000u);
    EXPECT_EQ(b.capacity(), 131072u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 256, 0u);
    std::memset(b.data(), 1, b.size());
    auto s = pool.stats();
    EXPECT_EQ(s.misses, 1);
    EXPECT_EQ(s.in_use_bytes, 131072);
    EXPECT_EQ(s.requested_bytes, 100000);
    EXPECT_EQ(s.reserved_bytes, 131072);
  }
  auto s = pool.stats();
  EXPECT_EQ(s.in_use_bytes, 0);
  EXPECT_EQ(s.cached_bytes, 131072);
  EXPECT_EQ(s.cached_blocks, 1);
  auto again = pool.allocate(70000);  // same class: the same block
  EXPECT_EQ(again.data(), first);
  s = pool.stats();
  EXPECT_EQ(s.hits, 1);
  EXPECT_EQ(s.misses, 1);
  EXPECT_EQ(s.reserved_bytes, 131072);
  auto other = pool.allocate(1000);  // another class: a new block
  EXPECT_NE(other.data(), first);
  EXPECT_EQ(pool.stats().misses, 2);
  EXPECT_EQ(pool.stats().peak_in_use_bytes, 131072 + 1024);
  EXPECT_FALSE(pool.allocate(0));
  // moves keep one owner
  HostMemoryPool::Block moved = std::move(again);
  EXPECT_FALSE(again);
  EXPECT_EQ(moved.data(), first);
  moved.release();
  EXPECT_EQ(pool.stats().blocks_in_use, 1);
  EXPECT_FALSE(pool.stats().to_string().empty());
}

TEST(HostMemoryPool, TensorsReturnTheirBlockWhenTheStorageDies) {
  HostMemoryPool pool(HostMemoryPoolOptions().pinned(false));
  at::Tensor t = pool.empty({256, 1024}, at::kFloat);
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{256, 1024}));
  EXPECT_TRUE(t.is_contiguous());
  t.fill_(2.0);
  const void* p = t.data_ptr();
  auto view = t.narrow(0, 10, 5);  // a view keeps the storage alive
  t.reset();
  EXPECT_EQ(pool.stats().blocks_in_use, 1);
  EXPECT_TRUE(view.eq(2.0).all().item<bool>());
  view.reset();
  EXPECT_EQ(pool.stats().blocks_in_use, 0);
  auto u = pool.empty_like(at::empty({1024, 256}, at::kFloat));
  EXPECT_EQ(u.data_ptr(), p);
  EXPECT_EQ(pool.stats().hits, 1);
  auto z = pool.empty({0, 3}, at::kFloat);
  EXPECT_EQ(z.numel(), 0);
}

TEST(HostMemoryPool, CacheLimitEmptyCacheAndBlocksOutlivingThePool) {
  HostMemoryPool pool(HostMemoryPoolOptions().pinned(false).max_cached_bytes(4096));
  { auto a = pool.allocate(4096), b = pool.allocate(4096); }
  auto s = pool.stats();  // one kept, one returned to the system
  EXPECT_EQ(s.cached_bytes, 4096);
  EXPECT_EQ(s.system_frees, 1);
  EXPECT_EQ(s.reserved_bytes, 4096);
  pool.empty_cache();
  EXPECT_EQ(pool.stats().reserved_bytes, 0);
  EXPECT_EQ(pool.stats().peak_reserved_bytes, 8192);
  pool.reset_peak_stats();
  EXPECT_EQ(pool.stats().peak_reserved_bytes, 0);

  HostMemoryPool::Block survivor;
  at::Tensor tensor;
  {
    HostMemoryPool scoped(HostMemoryPoolOptions().pinned(false));
    survivor = scoped.allocate(10000);
    tensor = scoped.empty({100}, at::kDouble);
  }
  std::memset(survivor.data(), 0, survivor.size());  // still valid
  tensor.fill_(1.0);
  survivor.release();
  tensor.reset();  // freed, not cached (the pool is gone)
}

TEST(HostMemoryPool, ThreadSafe) {
  HostMemoryPool pool(HostMemoryPoolOptions().pinned(false));
  auto work = [&pool](int seed) {
    for (int i = 0; i < 2000; ++i) {
      auto b = pool.allocate(static_cast<size_t>(512 * (1 + (i * 7 + seed) % 5)));
      static_cast<char*>(b.data())[0] = 1;
    }
  };
  std::thread t1(work, 1), t2(work, 2);
  t1.join();
  t2.join();
  auto s = pool.stats();
  EXPECT_EQ(s.in_use_bytes, 0);
  EXPECT_EQ(s.hits + s.misses, 4000);
  EXPECT_LE(s.misses, 2 * 5);  // at most one block per class per thread
  EXPECT_EQ(s.reserved_bytes, s.cached_bytes);
}

TEST(HostMemoryPool, PinnedOnAGpuMachine) {
  EDKM_SKIP_WITHOUT_GPU();
  HostMemoryPool pool;
  EXPECT_TRUE(pool.pinned());
  auto t = pool.empty({1 << 20}, at::kFloat);
  EXPECT_TRUE(t.is_pinned());
  auto d = at::randn({1 << 20}, at::TensorOptions().device(at::kCUDA));
  t.copy_(d, /*non_blocking=*/true);
  EXPECT_TRUE(t.to(at::kCUDA).equal(d));
  EXPECT_TRUE(pool.allocate(64).pinned());
}

TEST(HostMemoryPool, ReusedFlagAndWrap) {
  HostMemoryPool pool(HostMemoryPoolOptions().pinned(false));
  auto first = pool.allocate(3000);
  EXPECT_FALSE(first.reused());
  void* p = first.data();
  at::Tensor t = HostMemoryPool::wrap(std::move(first), {750}, at::kFloat);  // 3000 bytes
  EXPECT_FALSE(first);                                                       // moved into the tensor
  EXPECT_EQ(t.data_ptr(), p);
  EXPECT_EQ(t.numel(), 750);
  t.fill_(3.0);
  EXPECT_EQ(pool.stats().blocks_in_use, 1);
  t.reset();  // the block goes back with the storage
  EXPECT_EQ(pool.stats().blocks_in_use, 0);
  auto again = pool.allocate(2500);  // same class: from the free list
  EXPECT_TRUE(again.reused());
  EXPECT_EQ(again.data(), p);
  HostMemoryPool::Block moved = std::move(again);
  EXPECT_TRUE(moved.reused());
  EXPECT_FALSE(again.reused());
  test::expect_error([&] { HostMemoryPool::wrap(std::move(moved), {1000}, at::kFloat); }, {"wrap", "needs 4000"});
  EXPECT_EQ(HostMemoryPool::wrap(HostMemoryPool::Block(), {0}, at::kFloat).numel(), 0);
}

TEST(HostMemoryPool, BadInput) {
  test::expect_error([] { HostMemoryPool(HostMemoryPoolOptions().alignment(100)); }, {"alignment", "100"});
  test::expect_error([] { HostMemoryPool(HostMemoryPoolOptions().max_cached_bytes(-1)); }, {"max_cached_bytes"});
  HostMemoryPool pool(HostMemoryPoolOptions().pinned(false));
  test::expect_error([&] { pool.empty({2, -1}, at::kFloat); }, {"negative size"});
  test::expect_error([&] { pool.empty_like(at::Tensor()); }, {"undefined"});
}

// A pinned pool whose page-locking allocation fails (nullptr, or an exception, as cudaHostAlloc
// does when the locked-memory limit is reached) hands out ordinary memory instead, counts it,
// and returns each block to the allocator it came from.
TEST(HostMemoryPool, FallsBackToPageableMemoryWhenPinningFails) {
  std::set<void*> locked, freed_locked;
  int calls = 0;
  HostAllocator alloc;
  alloc.alloc = [&](size_t bytes) -> void* {
    ++calls;
    if (calls == 2) return nullptr;
    if (calls == 3) throw std::runtime_error("cudaErrorMemoryAllocation (injected)");
    void* p = std::aligned_alloc(256, bytes);
    locked.insert(p);
    return p;
  };
  alloc.free = [&](void* p) {
    EXPECT_EQ(locked.count(p), 1u) << "a fallback block went to the page-locking allocator's free";
    freed_locked.insert(p);
    std::free(p);
  };
  {
    HostMemoryPool pool(HostMemoryPoolOptions().pinned_allocator(alloc));
    EXPECT_TRUE(pool.pinned());
    auto a = pool.allocate(1000);
    auto b = pool.allocate(5000);
    auto c = pool.allocate(70000);
    EXPECT_TRUE(a.pinned());
    EXPECT_FALSE(b.pinned());
    EXPECT_FALSE(c.pinned());
    std::memset(b.data(), 7, 5000);
    std::memset(c.data(), 9, 70000);
    EXPECT_EQ(static_cast<unsigned char*>(c.data())[69999], 9);
    const auto s = pool.stats();
    EXPECT_EQ(s.pinned_fallbacks, 2);
    EXPECT_EQ(s.misses, 3);
    EXPECT_NE(s.to_string().find("2 blocks not page-locked"), std::string::npos) << s.to_string();
    b.release();
    auto b2 = pool.allocate(5000);  // the fallback block, reused from the free list
    EXPECT_TRUE(b2.reused());
    EXPECT_FALSE(b2.pinned());
  }
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(freed_locked, locked);
}

// peak_bound: what the pool holds stays within a factor of the most it had in use; a miss first
// returns the least recently released blocks; a repeating pattern is all hits after its first
// round when the bound leaves room for its temporaries, and misses every round at 1.
TEST(HostMemoryPool, BoundByPeakEvictsTheOldestBeforeAMiss) {
  constexpr size_t MiB = size_t{1} << 20;
  HostMemoryPool pool(HostMemoryPoolOptions().pinned(false).peak_bound(1));
  auto a = pool.allocate(2 * MiB);
  auto b = pool.allocate(4 * MiB);
  void* pa = a.data();
  a.release();  // released first: the oldest
  b.release();
  auto s = pool.stats();
  EXPECT_EQ(s.cached_bytes, static_cast<int64_t>(6 * MiB));
  EXPECT_EQ(s.peak_in_use_bytes, static_cast<int64_t>(6 * MiB));
  // A 3 MiB miss: in use 3 MiB + cached may not pass 6 MiB, so 3 MiB of cache must go; the 2 MiB
  // block is the oldest, then the 4 MiB one.
  auto c = pool.allocate(3 * MiB);
  s = pool.stats();
  EXPECT_EQ(s.evictions, 2);
  EXPECT_EQ(s.cached_bytes, 0);
  EXPECT_EQ(s.reserved_bytes, static_cast<int64_t>(3 * MiB));
  c.release();
  // Within the peak nothing is evicted: 3 MiB cached + a 2 MiB miss = 5 MiB <= 6 MiB.
  auto d = pool.allocate(2 * MiB);
  s = pool.stats();
  EXPECT_EQ(s.evictions, 2);
  EXPECT_EQ(s.cached_bytes, static_cast<int64_t>(3 * MiB));
  // Only 1 MiB left under the peak: the 3 MiB block goes.
  auto e = pool.allocate(4 * MiB - 1);
  s = pool.stats();
  EXPECT_EQ(s.evictions, 3);
  EXPECT_EQ(s.reserved_bytes, static_cast<int64_t>(6 * MiB));
  (void)pa;
  d.release();
  e.release();

  // empty_cache restarts the peak: afterwards a 1 MiB in-use pattern caches no more than 1 MiB.
  pool.empty_cache();
  auto f = pool.allocate(MiB);
  f.release();
  auto g = pool.allocate(2 * MiB);  // miss above the new peak: the cached 1 MiB block goes
  s = pool.stats();
  EXPECT_EQ(s.cached_bytes, 0);
  EXPECT_EQ(s.reserved_bytes, static_cast<int64_t>(2 * MiB));
}

// One step (MiB, each its own size class): 3 5 3, free the first 3, 8 2 5; the peak in use is 23
// MiB, but reusing blocks by size class needs both 3 MiB blocks besides 5 8 2 5: 26 MiB (glibc would
// hand the freed 3 MiB to the 8).
std::pair<int64_t, int64_t> run_steps(HostMemoryPool& pool) {
  const std::vector<size_t> sizes = {3 << 20, 5 << 20, 3 << 20, 8 << 20, 2 << 20, 5 << 20};
  int64_t max_reserved = 0, steady_misses = 0;
  for (int step = 0; step < 4; ++step) {
    const auto before = pool.stats();
    std::vector<HostMemoryPool::Block> held;
    for (size_t i = 0; i < sizes.size(); ++i) {
      held.push_back(pool.allocate(sizes[i]));
      std::memset(held.back().data(), static_cast<int>(step), sizes[i]);
      if (i == 2) held.erase(held.begin());  // a temporary freed mid-step
      max_reserved = std::max(max_reserved, pool.stats().reserved_bytes);
    }
    while (!held.empty()) held.pop_back();  // the backward frees in reverse
    const auto after = pool.stats();
    if (step > 0) steady_misses += after.misses - before.misses;
    EXPECT_EQ(after.hits + after.misses - before.hits - before.misses, static_cast<int64_t>(sizes.size()));
  }
  return {max_reserved, steady_misses};
}

TEST(HostMemoryPool, PeakBoundServesARepeatingStepFromTheCache) {
  constexpr int64_t MiB = int64_t{1} << 20;
  {
    HostMemoryPool pool(HostMemoryPoolOptions().pinned(false).peak_bound(1.25));
    const auto [max_reserved, steady_misses] = run_steps(pool);
    EXPECT_EQ(steady_misses, 0);
    EXPECT_EQ(pool.stats().peak_in_use_bytes, 23 * MiB);
    EXPECT_EQ(max_reserved, 26 * MiB);  // <= 1.25 x 23
  }
  {
    HostMemoryPool pool(HostMemoryPoolOptions().pinned(false).peak_bound(1));
    const auto [max_reserved, steady_misses] = run_steps(pool);
    EXPECT_GT(steady_misses, 0);
    EXPECT_LE(max_reserved, 23 * MiB);
    EXPECT_GT(pool.stats().evictions, 0);
  }
  {
    HostMemoryPool pool(HostMemoryPoolOptions().pinned(false));  // no bound
    EXPECT_EQ(run_steps(pool).second, 0);
    EXPECT_EQ(pool.stats().evictions, 0);
  }
  EXPECT_THROW(HostMemoryPool(HostMemoryPoolOptions().peak_bound(0.5)), c10::Error);
  EXPECT_THROW(HostMemoryPool(HostMemoryPoolOptions().peak_bound(INFINITY)), c10::Error);
  {  // a huge finite bound never evicts (and does not overflow)
    HostMemoryPool pool(HostMemoryPoolOptions().pinned(false).peak_bound(1e300));
    EXPECT_EQ(run_steps(pool).second, 0);
    EXPECT_EQ(pool.stats().evictions, 0);
  }
}

// A request the system cannot serve first empties the cache, then fails by name; the pool stays usable.
TEST(HostMemoryPool, OutOfMemoryEmptiesTheCacheThenFailsClearly) {
  HostMemoryPool pool(HostMemoryPoolOptions().pinned(false).peak_bound(1.25));
  pool.allocate(size_t{3} << 20).release();
  ASSERT_EQ(pool.stats().cached_bytes, int64_t{3} << 20);
  const size_t impossible = size_t{1} << 62;
  try {
    pool.allocate(impossible);
    FAIL() << "an allocation of 2^62 bytes succeeded";
  } catch (const c10::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("out of host memory allocating"), std::string::npos) << what;
    EXPECT_NE(what.find("cached bytes"), std::string::npos) << what;
  }
  const auto s = pool.stats();
  EXPECT_EQ(s.cached_bytes, 0);
  EXPECT_EQ(s.reserved_bytes, 0);
  EXPECT_EQ(s.blocks_in_use, 0);
  auto b = pool.allocate(1 << 20);
  EXPECT_NE(b.data(), nullptr);
  // Beyond 2^62 bytes (where the size classes would overflow) the request is refused up front.
  EXPECT_THROW(pool.allocate(std::numeric_limits<size_t>::max()), c10::Error);
  EXPECT_EQ(HostMemoryPool::size_class(std::numeric_limits<size_t>::max()), std::numeric_limits<size_t>::max());
}

// MemoryMeter counts what the pools reserve (they allocate outside LibTorch's allocators).
TEST(HostMemoryPool, MemoryReportCountsThePools) {
  MemoryMeter meter;
  {
    HostMemoryPool pool(HostMemoryPoolOptions().pinned(false));
    auto t = pool.empty({1 << 18}, at::kFloat);  // 1 MiB
    const auto r = meter.report();
    EXPECT_GE(r.host_pool.current_delta(), 1 << 20);
    EXPECT_GE(r.host_pool.peak_delta(), 1 << 20);
    EXPECT_NE(r.to_string().find("host pools peak"), std::string::npos) << r.to_string();
  }
  const auto r = meter.report();
  EXPECT_EQ(r.host_pool.current_delta(), 0);
  EXPECT_GE(r.host_pool.peak_delta(), 1 << 20);
}

}  // namespace
}  // namespace edkm
