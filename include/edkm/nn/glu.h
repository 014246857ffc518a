#pragma once
// Fused gated linear units: GeGLU (x1 * GELU(x2)) and SwiGLU (x1 * SiLU(x2)) as autograd
// functions that save only their input and recompute the gate in backward, and the modules that
// use them.
//
// Memory: the plain composition `x1 * act(x2)` keeps act(x2) alive for backward (one [..., h]
// tensor per call, the "gate activations"); the fused form keeps nothing but its input, which the
// preceding Linear produced anyway. Backward recomputes act(x2): one extra activation per call.
#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>

#include "edkm/export.h"

namespace edkm {

/// The gate's activation.
enum class GLUActivation : uint8_t {
  kGELU,      ///< GeGLU: x1 * GELU(x2), exact erf GELU
  kGELUTanh,  ///< GeGLU with the tanh approximation of GELU
  kSiLU,      ///< SwiGLU: x1 * SiLU(x2) (LLaMA's MLP)
};

EDKM_API std::string to_string(GLUActivation a);

namespace functional {

/// Fused GLU over the last dim of `x` = [x1 | x2] (size 2h, even): returns x1 * act(x2), [..., h].
/// Saves only `x`; backward recomputes act(x2). Once differentiable (no double backward).
///
/// Example:
///   auto h = edkm::functional::fused_glu(up_proj(x), edkm::GLUActivation::kSiLU);
EDKM_API at::Tensor fused_glu(const at::Tensor& x, GLUActivation activation);
/// fused_glu(x, kGELU), or kGELUTanh when `tanh_approximation`.
EDKM_API at::Tensor geglu(const at::Tensor& x, bool tanh_approximation = false);
/// fused_glu(x, kSiLU).
EDKM_API at::Tensor swiglu(const at::Tensor& x);
/// The plain composition x1 * act(x2) through ordinary autograd (keeps act(x2) for backward):
/// the reference the fused form equals.
EDKM_API at::Tensor glu_reference(const at::Tensor& x, GLUActivation activation);

}  // namespace functional

/// Options of FusedGLU.
struct EDKM_API FusedGLUOptions {
  /* implicit */ FusedGLUOptions(GLUActivation activation = GLUActivation::kSiLU) : activation_(activation) {}
  /// The gate's activation. Default kSiLU (SwiGLU).
  TORCH_ARG(GLUActivation, activation);
};

/// The fused GLU activation as a module: [..., 2h] -> [..., h].
///
/// Example:
///   edkm::FusedGLU geglu(edkm::GLUActivation::kGELU);
///   auto y = geglu(x);  // x: [batch, seq, 2h]
class EDKM_API FusedGLUImpl : public torch::nn::Cloneable<FusedGLUImpl> {
 public:
  explicit FusedGLUImpl(FusedGLUOptions options = {});
  void reset() override {}
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  FusedGLUOptions options;
};
TORCH_MODULE(FusedGLU);

/// Options of GLUFeedForward.
struct EDKM_API GLUFeedForwardOptions {
  GLUFeedForwardOptions(int64_t d_model, int64_t hidden) : d_model_(d_model), hidden_(hidden) {}
  /// Input and output features. Required.
  TORCH_ARG(int64_t, d_model);
  /// Hidden features h (the up projection makes 2h: value and gate). Required.
  TORCH_ARG(int64_t, hidden);
  /// The gate's activation. Default kSiLU (SwiGLU).
  TORCH_ARG(GLUActivation, activation) = GLUActivation::kSiLU;
  /// Biases in both projections. Default false.
  TORCH_ARG(bool, bias) = false;
  /// Use the fused autograd function; false runs the plain composition. Default true.
  TORCH_ARG(bool, fused) = true;

 public:
  /// Throws when a size is not positive.
  void validate() const;
};

/// GLU feed-forward: Linear(d_model, 2h) -> fused GLU -> Linear(h, d_model). The up projection's
/// output rows [0, h) are the value x1, rows [h, 2h) the gate x2.
///
/// Example:
///   edkm::GLUFeedForward ff(edkm::GLUFeedForwardOptions(512, 1376));
///   auto y = ff(x);  // x: [batch, seq, 512]
class EDKM_API GLUFeedForwardImpl : public torch::nn::Cloneable<GLUFeedForwardImpl> {
 public:
  GLUFeedForwardImpl(int64_t d_model, int64_t hidden) : GLUFeedForwardImpl(GLUFeedForwardOptions(d_model, hidden)) {}
  explicit GLUFeedForwardImpl(GLUFeedForwardOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  GLUFeedForwardOptions options;
  torch::nn::Linear up{nullptr};    ///< d_model -> 2h
  torch::nn::Linear down{nullptr};  ///< h -> d_model
};
TORCH_MODULE(GLUFeedForward);

}  // namespace edkm
