// CPU twin of kernels/cuda/stream_kernel.cu: one pass of the streaming engine. Work items are
// (group, chunk) pairs, taken one at a time from a shared queue by the threads of the pass; each
// sums its partials in a private double buffer.
// cluster_dim 1 with fp32 compute takes the vectorised block path of this CPU (stream_block.h,
// AVX-512 or AVX2 + FMA with the inline exp of vec_exp.h) when the build has SLEEF (its exp is
// the tests' reference); everything else, and EDKM_STREAM_ISA=scalar, the per-weight reference
// path (stream_vector).
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cpu/env_choice.h"
#include "kernels/cpu/stream_isa.h"
#include "kernels/stream_math.h"

namespace edkm::kernels {
namespace {

struct BufferSink {
  double* acc;
  void add(int64_t slot, double v) { acc[slot] += v; }
};

template <class S, int DIM>
void run_items(const StreamParams& p, StreamQueue& items) {
  const FlushDenormalResults ftz;
  const bool reduces = stream_pass_reduces(p.pass);
  std::vector<double> acc(static_cast<size_t>(p.width));
  for (int64_t item; items.take(item);) {
    const int64_t g = item / p.chunks, c = item % p.chunks;
    if (!stream_group_active(p, g)) continue;
    std::fill(acc.begin(), acc.end(), 0.0);
    BufferSink sink{acc.data()};
    for (int64_t i = c * p.chunk, end = std::min(p.n, (c + 1) * p.chunk); i < end; ++i)
      stream_vector<S, kStreamMaxK, DIM>(p, g, i, sink);
    if (reduces) std::copy(acc.begin(), acc.end(), p.partials + item * p.width);
  }
}

StreamIsa detect() {
  StreamIsa best = StreamIsa::kScalar;
#if defined(EDKM_WITH_SLEEF)
  best = static_cast<StreamIsa>(cpu_vector_level());
#endif
  return capped_by_env(best, "EDKM_STREAM_ISA", {"scalar", "avx2", "avx512"});
}

std::atomic<int32_t>& chosen() {
  static std::atomic<int32_t> isa{static_cast<int32_t>(detect())};
  return isa;
}

std::atomic<int32_t>& skipping() {
  static std::atomic<int32_t> mode{[] {
    StreamSkip m = StreamSkip::kAuto;
    switch (env_choice("EDKM_STREAM_SKIP", {"0", "off", "auto", "always"})) {
      case 0:
      case 1:
        m = StreamSkip::kOff;
        break;
      case 3:
        m = StreamSkip::kAlways;
        break;
      default:
        break;
    }
    return static_cast<int32_t>(m);
  }()};
  return mode;
}

std::atomic<int64_t>& skipped_terms() {
  static std::atomic<int64_t> n{0};
  return n;
}

}  // namespace

int64_t stream_skipped_terms() { return skipped_terms().load(); }

void add_stream_skipped_terms(int64_t n) { skipped_terms() += n; }

void set_stream_skip(StreamSkip mode) { skipping() = static_cast<int32_t>(mode); }

StreamSkip stream_skip() { return static_cast<StreamSkip>(skipping().load()); }

StreamIsa stream_isa_available() {
  static const StreamIsa available = detect();
  return available;
}

void set_stream_isa(StreamIsa isa) { chosen() = static_cast<int32_t>(std::min(isa, stream_isa_available())); }

StreamIsa stream_isa() { return static_cast<StreamIsa>(chosen().load()); }

std::string to_string(StreamIsa isa) {
  switch (isa) {
    case StreamIsa::kAvx2:
      return "avx2";
    case StreamIsa::kAvx512:
      return "avx512";
    default:
      return "scalar";
  }
}

void stream_exp(StreamIsa isa, bool sleef, const float* in, float* out, int64_t n) {
  TORCH_CHECK(n % 16 == 0, "stream_exp: n must be a multiple of 16, got ", n);
  TORCH_CHECK(isa != StreamIsa::kScalar && isa <= stream_isa_available(), "stream_exp: ", to_string(isa),
              " is not a vectorised path of this CPU and build");
#if defined(EDKM_WITH_SLEEF)
  const FlushDenormalResults ftz;  // as in the passes
  isa == StreamIsa::kAvx512 ? stream_exp_avx512(sleef, in, out, n) : stream_exp_avx2(sleef, in, out, n);
#else
  (void)sleef, (void)in, (void)out;
#endif
}

void stream_pass_cpu(const StreamParams& p) {
  const int64_t items = p.groups * p.chunks;
  const bool f64 = p.kind == DType::kF64;
  const StreamIsa isa = stream_isa();
  const StreamSkip skip = stream_skip();
  StreamQueue queue(items);
  // One task per thread, each taking items until none is left (at::parallel_for alone would split
  // the items into equal contiguous ranges up front).
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
#if defined(EDKM_WITH_SLEEF)
    if (p.d == 1 && !f64 && isa != StreamIsa::kScalar) {
      isa == StreamIsa::kAvx512 ? stream_items_avx512(p, queue, skip) : stream_items_avx2(p, queue, skip);
      return;
    }
#endif
    (void)isa;
    (void)skip;
    if (p.d == 1)
      f64 ? run_items<double, 1>(p, queue) : run_items<float, 1>(p, queue);
    else
      f64 ? run_items<double, 0>(p, queue) : run_items<float, 0>(p, queue);
  });
}

}  // namespace edkm::kernels
