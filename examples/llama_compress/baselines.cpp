#include "baselines.h"

#include <ATen/ATen.h>
#include <edkm/dkm/palette.h>
#include <edkm/quant/gptq.h>

namespace llama_compress {

int64_t lut_groups(const Layer& l, const edkm::DKMOptions& o) {
  return o.granularity() == edkm::Granularity::kPerGroupedChannel ? l.weight.size(0) / o.group_size() : 1;
}

double lut_bits(const Layer& l, int64_t bits, int64_t groups) {
  return static_cast<double>(l.weight.numel() * bits + groups * (int64_t{1} << bits) * 16);
}

double uniform_bits(const Layer& l, int64_t bits, int64_t group_cols) {
  const int64_t rows = l.weight.size(0), cols = l.weight.numel() / rows;
  return edkm::uniform_bits_per_weight(rows, cols, bits, group_cols) * static_cast<double>(l.weight.numel());
}

at::Tensor kmeans_quantize(const at::Tensor& w, const edkm::DKMOptions& o) {
  return edkm::Palette::from_centroids(w, edkm::functional::init_centroids(w, o), o).decompress();
}

}  // namespace llama_compress
