// CPU twins of the table-engine kernels. Histogram and scatter-add use per-thread private
// 65536-bin tables merged at the end (no atomics, deterministic per thread count).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels/table_math.h"

namespace edkm::kernels {
namespace {

constexpr int64_t kGrain = 1 << 16;

template <class Acc, class F>
void privatised(int64_t n, Acc* out, F&& add) {
  std::fill(out, out + kTableSize, Acc{0});
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (n + kGrain - 1) / kGrain));
  std::vector<std::vector<Acc>> priv(static_cast<size_t>(chunks), std::vector<Acc>(kTableSize, Acc{0}));
  const int64_t per = (n + chunks - 1) / chunks;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      auto& h = priv[static_cast<size_t>(c)];
      for (int64_t i = c * per, e = std::min(n, (c + 1) * per); i < e; ++i) add(h, i);
    }
  });
  for (const auto& h : priv)
    for (int64_t b = 0; b < kTableSize; ++b) out[b] += h[static_cast<size_t>(b)];
}

}  // namespace

void table_histogram_cpu(const TableParams& p, int64_t* counts) {
  privatised<int64_t>(p.n, counts, [&](std::vector<int64_t>& h, int64_t i) { ++h[pattern_at(p.weight, i, p.dtype)]; });
}

void table_gather_cpu(const TableParams& p, const float* table, void* out) {
  at::parallel_for(0, p.n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) store_value<float>(out, i, table[pattern_at(p.weight, i, p.dtype)], p.dtype);
  });
}

void table_scatter_add_cpu(const TableParams& p, const void* grad, double* sums) {
  privatised<double>(p.n, sums, [&](std::vector<double>& h, int64_t i) {
    h[pattern_at(p.weight, i, p.dtype)] += static_cast<double>(load_value<float>(grad, i, p.dtype));
  });
}

void table_backward_cpu(const TableParams& p, const void* grad, const float* slope, const float* shift, void* dw) {
  at::parallel_for(0, p.n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const uint16_t k = pattern_at(p.weight, i, p.dtype);
      store_value<float>(dw, i, load_value<float>(grad, i, p.dtype) * slope[k] + shift[k], p.dtype);
    }
  });
}

}  // namespace edkm::kernels
