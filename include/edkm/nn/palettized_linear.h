#pragma once
// Running a palettized weight without decompressing it: a Linear and an Embedding whose weight
// stays as LUTs plus bit-packed indices (the compressed checkpoint's own layout), and the LUT
// matmul kernels behind them.
//
// Storage (resident = what the compressed checkpoint stores): for a weight of out x in,
//   lut     G x 2^bits fp32 (G = 1 per tensor, out / rows_per_lut per grouped channel)
//   packed  uint8, the out x in indices row-major, LSB-first, bits per index (as
//           edkm/io/checkpoint.h), plus 16 zero bytes so a kernel may load 16 bytes at any index
//   scale   out fp32 per-channel scale, or undefined
// W[r, c] = lut[r / rows_per_lut, index(r * in + c)] * scale[r].
//
// Kernels: batch rows up to kGemvMaxRows run the LUT-GEMV (on the CPU up to cpu_gemv_max_rows, on a
// GPU up to kCudaGemvMaxRows, in passes of kGemvMaxRows; indices unpacked in registers, LUT in
// registers for bits <= 5 and from L1 above; AVX-512 or AVX2 chosen at run time, scalar
// otherwise; multi-threaded over output rows); more rows run the LUT-GEMM (blocks of rows
// decoded to fp32 and multiplied by LibTorch's matmul). CUDA: the GEMV with the LUTs in shared
// memory and x staged there when in % 32 == 0 (the rows kernel: a warp per 2 rows, each step's
// index words loaded before its arithmetic and the next step's during it; else one warp per row),
// the GEMM by decoding tiles and cuBLAS. Measured on an H100 (benchmarks/results/gpu_h100/):
// 11008x4096 at 3 bits in 20.4 us, 1.7x cuBLAS bf16 and 3.3x fp32, 27% of HBM bandwidth (bound by
// instruction issue and shared-memory reads; the tiled kernel it replaced: 42 us).
//
// Example:
//   auto pal = edkm::load_compressed("model.edkm.safetensors").palettes.at("fc.weight");
//   edkm::PalettizedLinear fc(pal, bias);
//   at::Tensor y = fc(x);  // x: [..., in] -> [..., out], fp32 or bf16
#include <ATen/core/Tensor.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "edkm/dkm/palette.h"
#include "edkm/export.h"

namespace edkm {

/// The packed form of a 2-D palettized weight (see the top of this header).
struct EDKM_API PackedWeight {
  at::Tensor lut;     ///< G x 2^bits, fp32, on the weight's device
  at::Tensor packed;  ///< uint8 [ceil(out * in * bits / 8) + 16]
  at::Tensor scale;   ///< out fp32, or undefined
  int64_t out_features = 0, in_features = 0, bits = 0;
  int64_t rows_per_lut = 0;  ///< rows sharing one LUT (out_features for one LUT per tensor)

  /// From a Palette of a 2-D weight with cluster_dim 1 (per tensor or per grouped channel).
  /// Throws c10::Error naming what is unsupported (other shapes, cluster_dim > 1, per-channel
  /// LUTs are grouped channels of 1 row and allowed).
  static PackedWeight from_palette(const Palette& palette);
  /// out x in at `bits` with uniformly random indices and LUT entries drawn from N(0, stddev^2) (one
  /// LUT per rows_per_lut rows; 0: one per tensor), made on `device` by LibTorch's default
  /// generator of that device (torch::manual_seed repeats it): a weight of a shape for speed and
  /// memory measurements without a checkpoint (LlamaRuntime::random).
  static PackedWeight random(int64_t out_features, int64_t in_features, int64_t bits, int64_t rows_per_lut = 0,
                             c10::Device device = at::kCPU, double stddev = 0.02);
  /// The weight rebuilt: out x in fp32 (for checks; the kernels never build it).
  at::Tensor decompress() const;
  /// Rows [begin, end) rebuilt, fp32 (an embedding lookup decodes rows this way).
  at::Tensor decompress_rows(int64_t begin, int64_t end) const;
  /// Bytes held: packed indices, LUTs and scales.
  int64_t resident_bytes() const;
  PackedWeight to(c10::Device device) const;
  /// Row blocks stacked into one weight (e.g. q, k and v projections run as one GEMV): every part
  /// has the same in_features, bits and rows_per_lut (grouped LUTs), and all or none a scale.
  static PackedWeight concat_rows(const std::vector<PackedWeight>& parts);
};

namespace functional {
/// Rows of x up to this many run the LUT-GEMV in one pass.
constexpr int64_t kGemvMaxRows = 4;
/// On the CPU, rows of x up to this many (32 at 1-4 bits, 24 at 5-8) run the GEMV 4 rows at a
/// time; more run the LUT-GEMM (rows of W decoded to fp32 and multiplied by LibTorch). Measured
/// on a 2-core AVX-512 CPU (benchmarks/results/lut_inference.md): at 5-12 rows the passes take
/// 2.1-4.2x less time than the GEMM on SmolLM2 and LLaMA-7B shapes, and break even near 32-48
/// rows at 3 and 4 bits, 24-32 at 8 bits.
EDKM_API int64_t cpu_gemv_max_rows(int64_t bits);
/// On a CUDA device, rows of x up to this many run the GEMV 4 rows at a time; more decode W to fp32
/// in blocks of 64 MiB (4 MiB on the CPU) for one cuBLAS matmul each. Chosen, not yet measured: on
/// an H100 the GEMV reads 11008x4096 at 3 bits in 20 us a pass, where decoding it writes 180 MB of
/// fp32 that the matmul reads back (~130 us at the copy probe's rate); the decode in 4 MiB blocks,
/// as on the CPU, took 16 prompt tokens of a 7B model 0.27 s (224 matmuls of ~40 launches each).
constexpr int64_t kCudaGemvMaxRows = 16;
/// y = x W^T (+ bias) with W packed: x [..., in] (any strides, fp32 or bf16) -> [..., out] in x's
/// dtype, computed in fp32; bias holds out values (any shape). Differentiable in x and bias (dx =
/// dy W, W decoded a block of rows at a time); the packed weight has no gradient.
EDKM_API at::Tensor lut_linear(const at::Tensor& x, const PackedWeight& w, const at::Tensor& bias = {});
/// The same into a tensor the caller keeps (a decode loop's buffers: no allocation, fewer
/// LibTorch operations per call): out [m, out] = x [m, in] W^T (+ bias), x, out and bias
/// contiguous fp32 on the weight's device, out not overlapping x. Records no gradient (refused
/// when grad mode is on and an input requires one).
EDKM_API void lut_linear_out(const at::Tensor& out, const at::Tensor& x, const PackedWeight& w,
                             const at::Tensor& bias = {});
/// Rows of W for token ids (any shape, int64) -> [..., in] fp32: a palettized embedding lookup.
EDKM_API at::Tensor lut_embedding(const at::Tensor& ids, const PackedWeight& w);
/// Which CPU path the LUT kernels take: "avx512vbmi" (AVX-512 with VBMI), "avx512", "avx2" or
/// "scalar" (EDKM_LUT_ISA=scalar|avx2|avx512 caps it).
EDKM_API std::string lut_kernel_isa();
}  // namespace functional

/// A Linear whose weight stays packed (LUTs + bit-packed indices).
///
/// Example:
///   edkm::PalettizedLinear fc(palette, bias);   // palette of an out x in weight
///   auto y = fc(x);
class EDKM_API PalettizedLinearImpl : public torch::nn::Cloneable<PalettizedLinearImpl> {
 public:
  explicit PalettizedLinearImpl(const Palette& palette, const at::Tensor& bias = {});
  explicit PalettizedLinearImpl(PackedWeight weight, const at::Tensor& bias = {});
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);
  /// The weight rebuilt (fp32), for checks.
  at::Tensor weight() const { return packed.decompress(); }
  PackedWeight packed;
  at::Tensor bias;  ///< undefined when none
};
TORCH_MODULE(PalettizedLinear);

/// An Embedding whose table stays packed; linear() serves a head tied to it.
///
/// Example:
///   edkm::PalettizedEmbedding emb(palette);   // palette of a vocab x hidden table
///   auto h = emb(ids);                        // [..., hidden] fp32
///   auto logits = emb->linear(h);             // tied head: h W^T
class EDKM_API PalettizedEmbeddingImpl : public torch::nn::Cloneable<PalettizedEmbeddingImpl> {
 public:
  explicit PalettizedEmbeddingImpl(const Palette& palette);
  explicit PalettizedEmbeddingImpl(PackedWeight weight);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& ids);
  at::Tensor linear(const at::Tensor& x) const;
  PackedWeight packed;
};
TORCH_MODULE(PalettizedEmbedding);

}  // namespace edkm
