#pragma once
// Optimizers that save memory: AdamW with its two moments kept in bf16, 4 bytes of state per
// parameter instead of torch::optim::AdamW's 8 (fp32 moments). A 7B model's optimizer state drops
// from 56 GB to 28 GB; the update itself is computed in fp32, in chunks of 2^22 elements, so the
// fp32 temporaries stay small next to a large embedding.
//
// A torch::optim::Optimizer: param groups, set_lr through the options, zero_grad, step(closure),
// and torch::save / torch::load of its state (so a run with it can be resumed).
//
// Example:
//   edkm::optim::AdamWBf16 opt(model->parameters(), edkm::optim::AdamWBf16Options(1e-4).weight_decay(0.01));
//   loss.backward();
//   opt.step();
//   opt.zero_grad();
//
// The moments (and bf16 parameters) are stored with stochastic rounding (to_bf16_stochastic): rounded
// to nearest, the second moment could never decay (beta2 = 0.999 moves it by 0.1% per step, under
// half a bf16 ulp, 0.2-0.4%): on N(0, 1) gradients it reached 1.24 against fp32 AdamW's 0.95 after
// 3,000 steps, and stayed at 1.24 against 0.14 once the gradients shrank 10x (steps 3x too small).
// Stochastically rounded, it stays within 2% of fp32 AdamW's (tests/optim_test.cpp). The same goes for bf16 parameters:
// an update smaller than half an ulp moves the weight with the probability it deserves, instead of never.
#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "edkm/export.h"

namespace edkm::optim {

struct EDKM_API AdamWBf16Options : public torch::optim::OptimizerCloneableOptions<AdamWBf16Options> {
  AdamWBf16Options(double lr = 1e-3);  // NOLINT(google-explicit-constructor): as torch::optim::AdamWOptions
  TORCH_ARG(double, lr) = 1e-3;
  typedef std::tuple<double, double> betas_t;
  TORCH_ARG(betas_t, betas) = std::make_tuple(0.9, 0.999);
  TORCH_ARG(double, eps) = 1e-8;
  TORCH_ARG(double, weight_decay) = 1e-2;

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override;
  void set_lr(const double lr) override;
};

struct EDKM_API AdamWBf16ParamState : public torch::optim::OptimizerCloneableParamState<AdamWBf16ParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(at::Tensor, exp_avg);     ///< bf16, the parameter's shape
  TORCH_ARG(at::Tensor, exp_avg_sq);  ///< bf16, the parameter's shape

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

/// fp32 -> bf16 with stochastic rounding: each value rounds up with probability equal to its
/// distance from the bf16 below, over the bf16 spacing there (unbiased: E[round(x)] = x). The
/// randomness is a hash of (seed, offset + the flat index), so the same call gives the same bits and
/// a resumed run is bitwise the uninterrupted one. Infinities are kept and NaNs stay NaNs.
/// Any device: on the CPU one threaded loop, elsewhere the same hash in tensor ops, bit for bit
/// (a non-contiguous CPU input takes the tensor-op path too).
EDKM_API at::Tensor to_bf16_stochastic(const at::Tensor& x, uint64_t seed, int64_t offset = 0);

/// AdamW (decoupled weight decay, bias-corrected moments) with bf16 moments.
class EDKM_API AdamWBf16 : public torch::optim::Optimizer {
 public:
  /// Throws c10::Error naming the bad option (lr, eps, betas or weight_decay out of range).
  explicit AdamWBf16(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                     AdamWBf16Options defaults = {});
  explicit AdamWBf16(std::vector<at::Tensor> params, AdamWBf16Options defaults = {})
      : AdamWBf16({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

  at::Tensor step(LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  /// Bytes of optimizer state per parameter once every parameter has stepped.
  static constexpr int kStateBytesPerParam = 4;
};

}  // namespace edkm::optim
