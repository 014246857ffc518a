// edkm/memory/memory.h: the counting CPU allocator and MemoryMeter.
#include <c10/core/CPUAllocator.h>
#include <edkm/memory/memory.h>

#include <thread>

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

}  // namespace
}  // namespace edkm
