#pragma once
// The post-training baselines of the LLaMA example and the bits each method stores, counted the
// same way for every row: codes at `bits` per weight, plus per LUT 2^bits entries at 16 bits
// (k-means, GPTQ onto a LUT, DKM), or per row and group of input columns a scale and a zero point
// at 16 bits each (RTN, GPTQ on the uniform grid).
#include <ATen/core/Tensor.h>
#include <edkm/dkm/dkm.h>

#include <cstdint>
#include <string>

namespace llama_compress {

/// A clustered layer of the model.
struct Layer {
  std::string name;
  at::Tensor weight;  // the registered parameter
  edkm::DKMOptions options;
  bool linear = false;  // a Linear of the decoder stack (not the embedding or the head)
};

/// Bits a LUT layer stores: numel * bits + groups * 2^bits * 16.
double lut_bits(const Layer& l, int64_t bits, int64_t groups);
/// LUTs of `l` under DKM options (1 per tensor, rows / group_size per grouped channel).
int64_t lut_groups(const Layer& l, const edkm::DKMOptions& o);
/// Bits a uniform-grid layer stores (edkm::uniform_bits_per_weight: a scale and a zero point at
/// 16 bits per row and group of `group_cols` input columns; 0: per row).
double uniform_bits(const Layer& l, int64_t bits, int64_t group_cols);

/// Post-training k-means: the weight replaced by its nearest centroids (edkm's init under `o`).
at::Tensor kmeans_quantize(const at::Tensor& w, const edkm::DKMOptions& o);

}  // namespace llama_compress
