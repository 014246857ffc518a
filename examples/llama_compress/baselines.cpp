#include "baselines.h"

#include <ATen/ATen.h>
#include <edkm/palette.h>

namespace llama_compress {

int64_t lut_groups(const Layer& l, const edkm::DKMOptions& o) {
  return o.granularity() == edkm::Granularity::kPerGroupedChannel ? l.weight.size(0) / o.group_size() : 1;
}

double lut_bits(const Layer& l, int64_t bits, int64_t groups) {
  return static_cast<double>(l.weight.numel() * bits + groups * (int64_t{1} << bits) * 16);
}

double uniform_bits(const Layer& l, int64_t bits, int64_t group_cols) {
  const int64_t cols = l.weight.numel() / l.weight.size(0);
  const int64_t groups = group_cols > 0 ? (cols + group_cols - 1) / group_cols : 1;
  return static_cast<double>(l.weight.numel() * bits + l.weight.size(0) * groups * 32);
}

at::Tensor round_to_nearest(const at::Tensor& w, int64_t bits, int64_t group_cols) {
  const at::Tensor w32 = w.to(at::kFloat).reshape({w.size(0), -1});
  const int64_t cols = w32.size(1);
  const int64_t g = group_cols > 0 ? std::min(group_cols, cols) : cols;
  at::Tensor out = at::empty_like(w32);
  for (int64_t c0 = 0; c0 < cols; c0 += g) {  // the last group may be narrower (576 columns at g128)
    const at::Tensor v = w32.narrow(1, c0, std::min(g, cols - c0));
    const at::Tensor lo = std::get<0>(v.min(1, true)), hi = std::get<0>(v.max(1, true));
    const at::Tensor step = ((hi - lo) / static_cast<double>((1 << bits) - 1)).clamp_min(1e-12);
    out.narrow(1, c0, v.size(1)).copy_(((v - lo) / step).round() * step + lo);
  }
  return out.reshape(w.sizes()).to(w.scalar_type());
}

at::Tensor kmeans_quantize(const at::Tensor& w, const edkm::DKMOptions& o) {
  return edkm::Palette::from_centroids(w, edkm::functional::init_centroids(w, o), o).decompress();
}

}  // namespace llama_compress
