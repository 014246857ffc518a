#pragma once
// Instruction-set variants of the CPU streaming passes and their run-time choice.
#include <atomic>
#include <cstdint>
#include <string>

#include "kernels/stream_math.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#include "edkm/export.h"
#endif

EDKM_INTERNAL_BEGIN
namespace edkm::kernels {

/// Flush-to-zero for the calling thread while in scope (x86: MXCSR.FTZ). On real LLM weights
/// (SmolLM2: std 0.14-0.22 against tau 1e-4) more than half of the softmax terms lie below e^-87, where
/// exp returns a denormal, and every later multiply or conversion of a denormal takes a
/// microcode assist of ~100 cycles. Such a term (< 1.2e-38) is far below the fp32 precision of the
/// softmax sum (>= 1) and below zero_threshold, so flushing it to 0 changes no sum, no clamped
/// attention value, and gradient terms only below 1e-38 absolute.
class FlushDenormalResults {
 public:
#if defined(__x86_64__) || defined(__i386__)
  FlushDenormalResults() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | _MM_FLUSH_ZERO_ON); }
  ~FlushDenormalResults() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

/// The CPU code path of the streaming passes.
enum class StreamIsa : int32_t {
  kScalar = 0,  ///< stream_vector per weight (the reference; every cluster_dim and dtype)
  kAvx2 = 1,    ///< cluster_dim 1, fp32 compute: 16-lane blocks, AVX2 + FMA, SLEEF exp
  kAvx512 = 2,  ///< the same with AVX-512
};

/// The best path this CPU and build support; EDKM_STREAM_ISA=scalar|avx2|avx512 in the
/// environment caps it (for comparisons; a path the CPU lacks is never chosen).
StreamIsa stream_isa_available();
/// Sets the path for this process (tests and benchmarks): capped at what is available.
void set_stream_isa(StreamIsa isa);
StreamIsa stream_isa();
std::string to_string(StreamIsa isa);

/// Exact work skipping in the vectorised passes (kernels/cpu/stream_block.h: value-ordered tiles,
/// a window of centroids per block; equal to the unskipped passes to fp32 rounding).
enum class StreamSkip : int32_t {
  kOff = 0,
  kAuto = 1,    ///< where it pays: K >= kStreamSkipMinK and a cost model (stream_block.h) says so
  kAlways = 2,  ///< every work item whose centroids are finite (tests)
};
/// The work items of a pass, handed out one at a time to whichever thread asks next: a thread
/// slowed by the machine (a shared CI runner, a core taken by another process) takes fewer items
/// instead of holding the others at the pass's end.
class StreamQueue {
 public:
  explicit StreamQueue(int64_t items) : next_(0), items_(items) {}
  /// The next item, or false when none is left.
  bool take(int64_t& item) {
    item = next_.fetch_add(1, std::memory_order_relaxed);
    return item < items_;
  }

 private:
  std::atomic<int64_t> next_;
  int64_t items_;
};

/// Measured: with 8 or 16 centroids the value-order sort costs what the windows save.
constexpr int64_t kStreamSkipMinK = 32;
#if defined(EDKM_WITH_SLEEF)
void stream_items_avx2(const StreamParams& p, StreamQueue& items, StreamSkip skip);
void stream_items_avx512(const StreamParams& p, StreamQueue& items, StreamSkip skip);
void stream_exp_avx2(bool sleef, const float* in, float* out, int64_t n);
void stream_exp_avx512(bool sleef, const float* in, float* out, int64_t n);
#endif
/// out = exp(in) as the vectorised passes of `isa` compute it (kernels/cpu/vec_exp.h), or with
/// SLEEF's u10 exp of that instruction set (sleef = true, the reference): for tests. n: a multiple
/// of 16; isa must be available and vectorised.
void stream_exp(StreamIsa isa, bool sleef, const float* in, float* out, int64_t n);
/// The mode for this process; EDKM_STREAM_SKIP=0|auto|always in the environment sets the default (auto).
void set_stream_skip(StreamSkip mode);
StreamSkip stream_skip();
/// (weight, centroid) attention terms the vectorised passes of this process left out so far.
int64_t stream_skipped_terms();
void add_stream_skipped_terms(int64_t n);

}  // namespace edkm::kernels
EDKM_INTERNAL_END
