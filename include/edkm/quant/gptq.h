#pragma once
// GPTQ: post-training quantization of Linear weights with second-order error feedback
// (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
// Transformers"), on a uniform grid (the paper's) or a non-uniform look-up table (SqueezeLLM's
// sensitivity-weighted 1-D k-means, reusing edkm::kmeans).
//
// For a Linear y = x W^T with calibration inputs x (n x cols) and H = 2/n sum x x^T, GPTQ
// quantizes the columns of W (rows x cols) one at a time and spreads each column's rounding error
// over the columns not yet quantized, through the upper Cholesky factor U of H^-1:
//   for column j:  q_j = quant(w_j);  e = (w_j - q_j) / U_jj;  W[:, j+1:] -= e U[j, j+1:]
// which minimises the layer-output error sum_rows (w - q) H (w - q)^T greedily (the paper's
// Theorem). Lazy batches of `block_size` columns apply the updates of a block to the columns after
// it as one matrix product.
//
// The calibration set: H has rank at most n (the number of calibration vectors). Below
// in_features vectors it is singular: only damping (damp > 0) makes it invertible, and GPTQ then
// optimises over a subspace the calibration data does not span. gptq_quantize (and
// gptq_quantize_llama, before any layer is touched) therefore refuse fewer than `min_samples`
// vectors (default: in_features), and always refuse fewer than in_features with damp == 0.
// Lower min_samples explicitly to quantize from a small calibration set anyway.
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "edkm/export.h"
#include "edkm/models/llama.h"

namespace edkm {

/// The grid each weight is rounded to.
enum class QuantGrid : uint8_t {
  kUniform,  ///< 2^bits evenly spaced levels, asymmetric min-max scale/zero per row (and group of columns)
  kLut,      ///< 2^bits centroids per `lut_rows` rows: Hessian-diagonal-weighted 1-D k-means (SqueezeLLM)
};

EDKM_API std::string to_string(QuantGrid g);

/// Options of GPTQ.
///
/// Example:
///   auto opts = edkm::GPTQOptions(3).group_size(64).act_order(true);
///   auto lut = edkm::GPTQOptions(4).grid(edkm::QuantGrid::kLut).lut_rows(8);
struct EDKM_API GPTQOptions {
  /* implicit */ GPTQOptions(int64_t bits = 4) : bits_(bits) {}

  /// Bits per weight: 2^bits levels or centroids, 1..8. Default 4.
  TORCH_ARG(int64_t, bits);
  /// Uniform levels or a per-row-group look-up table. Default kUniform.
  TORCH_ARG(QuantGrid, grid) = QuantGrid::kUniform;
  /// kUniform: input columns sharing one scale/zero per row (the last group is narrower when
  /// it does not divide the columns); 0: one
  /// scale/zero per row. Default 128.
  TORCH_ARG(int64_t, group_size) = 128;
  /// kLut: output rows sharing one look-up table; must divide the rows; 0: one LUT per tensor. Default 1 (one per row,
  /// as SqueezeLLM).
  TORCH_ARG(int64_t, lut_rows) = 1;
  /// Damping: this fraction of the mean of diag(H) is added to the diagonal. Default 0.01.
  TORCH_ARG(double, damp) = 0.01;
  /// Columns per lazy batch. Any value gives the same result (up to rounding). Default 128.
  TORCH_ARG(int64_t, block_size) = 128;
  /// Quantize columns in order of decreasing diag(H). The uniform grid's groups are then "static":
  /// their scale/zero are computed up front on the original column groups. Default false.
  TORCH_ARG(bool, act_order) = false;
  /// Fewest calibration vectors a Hessian must hold (see the top of this header); -1: the layer's
  /// in_features; never below 1. Default -1.
  TORCH_ARG(int64_t, min_samples) = -1;

  // TORCH_ARG leaves the access at private:
 public:
  /// 2^bits.
  int64_t levels() const { return int64_t{1} << bits_; }
  /// Throws c10::Error naming the first invalid option.
  void validate() const;
};

/// The Hessian of a Linear layer's reconstruction error, H = 2/n sum x x^T over the calibration
/// vectors x (rows of the inputs), accumulated in fp64 on the device of the first input.
/// n counts vectors (tokens), where the reference GPTQ counts sequences: H differs by a constant
/// factor, which changes nothing in GPTQ (damping is relative to diag(H)).
///
/// Example:
///   edkm::GPTQHessian h(linear->weight.size(1));
///   for (auto& x : calibration) h.add(x);  // x: [..., in_features]
///   auto r = edkm::gptq_quantize(linear->weight, h, edkm::GPTQOptions(4));
class EDKM_API GPTQHessian {
 public:
  explicit GPTQHessian(int64_t in_features);
  /// x: [..., in_features], any floating dtype and device.
  void add(const at::Tensor& x);
  int64_t in_features() const { return in_features_; }
  /// Calibration vectors added so far.
  int64_t samples() const { return samples_; }
  /// H = 2/n sum x x^T (in_features x in_features, fp64); zeros before any add.
  at::Tensor hessian() const;

 private:
  int64_t in_features_;
  int64_t samples_ = 0;
  at::Tensor sum_;  // sum x x^T, fp64
};

/// What gptq_quantize returns: `weight` on the input's device, the rest on CPU.
struct GPTQResult {
  at::Tensor weight;  ///< rows x cols: the quantized (dequantized) weight, dtype and device of the input
  at::Tensor codes;   ///< rows x cols, uint8: kUniform the integer level 0..2^bits-1; kLut the index into the row's LUT
  at::Tensor scales;  ///< kUniform: rows x groups, fp64 (q = scale * (code - zero)); undefined for kLut
  at::Tensor zeros;   ///< kUniform: rows x groups, fp64; undefined for kLut
  at::Tensor luts;    ///< kLut: (rows / lut_rows) x 2^bits, fp64, ascending; undefined for kUniform
  double error = 0;   ///< sum over rows of (w - q) H (w - q)^T, H undamped, fp64
  double bits_per_weight = 0;  ///< codes + scale and zero (16 bits each) per group, or LUT entries at 16 bits
};

/// GPTQ on `weight` (rows x cols, floating, finite) with the Hessian of its inputs. Computes in
/// fp64 on CPU. Columns whose diag(H) is 0 (never active) are set to 0, as the reference does.
/// Uniform grid without act_order: a group's scale/zero come from its weights as error feedback
/// left them when its first column is quantized (group_size 0: from the whole weight up front), so
/// the result does not depend on block_size. The reference reads a group that starts inside a lazy
/// block before that block's updates: equal to this when group_size is a multiple of block_size
/// (the defaults: 128 and 128).
/// kLut: the LUTs are fixed before the loop, from the weights (dead columns, with no weight, left
/// out): exact 1-D k-means (kmeans::optimal_1d) up to 1024 distinct values per LUT, else
/// kmeans::binned_1d; each entry goes to its nearest centroid.
EDKM_API GPTQResult gptq_quantize(const at::Tensor& weight, const GPTQHessian& hessian, const GPTQOptions& options);

/// Round-to-nearest on GPTQ's uniform grid (asymmetric min-max per row, or per row and group of
/// `group_size` columns; the range always includes 0, as the reference's quantizer): the baseline.
/// Returns the dequantized weight in the input's dtype and device.
EDKM_API at::Tensor rtn_quantize(const at::Tensor& weight, int64_t bits, int64_t group_size);
/// Storage of a uniform grid: bits + 2 x 16 bits per group (group_size 0: per row).
EDKM_API double uniform_bits_per_weight(int64_t rows, int64_t cols, int64_t bits, int64_t group_size);
/// Storage of a LUT grid: bits + 2^bits x 16 bits per `lut_rows` rows (0: per tensor).
EDKM_API double lut_bits_per_weight(int64_t rows, int64_t cols, int64_t bits, int64_t lut_rows);

/// What gptq_quantize_llama returns.
struct GPTQReport {
  /// ("model.layers.0.self_attn.q_proj", error) for every quantized Linear, in quantization order.
  std::vector<std::pair<std::string, double>> layer_error;
  /// Over all quantized weights (weighted by their sizes).
  double bits_per_weight = 0;
  double seconds = 0;
};

/// Sequential GPTQ of every decoder layer's seven Linears (q/k/v/o_proj, gate/up/down_proj; the
/// embedding and the head stay as they are), as the reference's llama.py with true-sequential:
/// the calibration tokens (batch x seq, int64) run through the embedding; then, layer by layer,
/// q/k/v are quantized from the input-layernorm output, o_proj from the attention output computed
/// with the quantized q/k/v, gate/up from the post-attention-layernorm output after the quantized
/// attention, down_proj from silu(gate) * up of the quantized gate/up; the layer's output with all
/// its weights quantized is the next layer's input. Weights are replaced in place. The
/// calibration batch runs in chunks of sequences (about 4096 tokens each). Checks the calibration
/// size against every layer (see the top of this header) before any work. `progress(done, total)`
/// after each Linear.
///
/// Example:
///   auto report = edkm::gptq_quantize_llama(model, tokens, edkm::GPTQOptions(4).group_size(64));
EDKM_API GPTQReport gptq_quantize_llama(LlamaForCausalLM& model, const at::Tensor& calibration,
                                        const GPTQOptions& options,
                                        std::function<void(int64_t done, int64_t total)> progress = {});

}  // namespace edkm
