// CPU twin of kernels/cuda/stream_kernel.cu: one pass of the streaming engine. Work items are
// (group, chunk) pairs run in parallel; each sums its partials in a private double buffer.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels/stream_math.h"

namespace edkm::kernels {
namespace {

struct BufferSink {
  double* acc;
  void add(int64_t slot, double v) { acc[slot] += v; }
};

template <class S, int DIM>
void run_items(const StreamParams& p) {
  const int64_t items = p.groups * p.chunks;
  const bool reduces = stream_pass_reduces(p.pass);
  at::parallel_for(0, items, 1, [&](int64_t b, int64_t e) {
    std::vector<double> acc(static_cast<size_t>(p.width));
    for (int64_t item = b; item < e; ++item) {
      const int64_t g = item / p.chunks, c = item % p.chunks;
      if (!stream_group_active(p, g)) continue;
      std::fill(acc.begin(), acc.end(), 0.0);
      BufferSink sink{acc.data()};
      for (int64_t i = c * p.chunk, end = std::min(p.n, (c + 1) * p.chunk); i < end; ++i)
        stream_vector<S, kStreamMaxK, DIM>(p, g, i, sink);
      if (reduces) std::copy(acc.begin(), acc.end(), p.partials + item * p.width);
    }
  });
}

}  // namespace

void stream_pass_cpu(const StreamParams& p) {
  const bool f64 = p.kind == ValueKind::kF64;
  if (p.d == 1)
    f64 ? run_items<double, 1>(p) : run_items<float, 1>(p);
  else
    f64 ? run_items<double, 0>(p) : run_items<float, 0>(p);
}

}  // namespace edkm::kernels
