// Fused GLU autograd functions: save the input only, recompute the gate in backward.
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/silu_backward.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include <ostream>

#include "edkm/nn/glu.h"

namespace edkm {

std::string to_string(GLUActivation a) {
  switch (a) {
    case GLUActivation::kGELU:
      return "gelu";
    case GLUActivation::kGELUTanh:
      return "gelu_tanh";
    case GLUActivation::kSiLU:
      return "silu";
  }
  return "?";
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor activate(const at::Tensor& gate, GLUActivation a) {
  switch (a) {
    case GLUActivation::kGELU:
      return at::gelu(gate);
    case GLUActivation::kGELUTanh:
      return at::gelu(gate, "tanh");
    case GLUActivation::kSiLU:
      return at::silu(gate);
  }
  TORCH_CHECK(false, "edkm: unknown GLUActivation");
}

// out = act(gate), written into `out`.
void activate_out(at::Tensor& out, const at::Tensor& gate, GLUActivation a) {
  switch (a) {
    case GLUActivation::kGELU:
      at::gelu_out(out, gate);
      return;
    case GLUActivation::kGELUTanh:
      at::gelu_out(out, gate, "tanh");
      return;
    case GLUActivation::kSiLU:
      at::silu_out(out, gate);
      return;
  }
}

// out = grad * act'(gate), written into `out` (a strided view of the input gradient).
void activation_backward_out(at::Tensor& out, const at::Tensor& grad, const at::Tensor& gate, GLUActivation a) {
  switch (a) {
    case GLUActivation::kGELU:
      at::gelu_backward_out(out, grad, gate);
      return;
    case GLUActivation::kGELUTanh:
      at::gelu_backward_out(out, grad, gate, "tanh");
      return;
    case GLUActivation::kSiLU:
      at::silu_backward_out(out, grad, gate);
      return;
  }
}

void check_glu_input(const at::Tensor& x) {
  TORCH_CHECK(x.defined(), "edkm: fused_glu: input is undefined");
  TORCH_CHECK(x.dim() >= 1, "edkm: fused_glu: input must have at least one dim, got a scalar");
  TORCH_CHECK(x.size(-1) % 2 == 0, "edkm: fused_glu: the last dim holds [value | gate] and must be even, got ",
              x.size(-1));
  TORCH_CHECK(x.is_floating_point(), "edkm: fused_glu: input must be floating point, got ", x.scalar_type());
}

struct FusedGLUFunction : public torch::autograd::Function<FusedGLUFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t activation) {
    const auto a = static_cast<GLUActivation>(activation);
    const int64_t h = x.size(-1) / 2;
    at::Tensor out = activate(x.narrow(-1, h, h), a);  // the gate, reused as the output buffer
    out.mul_(x.narrow(-1, 0, h));
    ctx->save_for_backward({x});
    ctx->saved_data["activation"] = activation;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const auto a = static_cast<GLUActivation>(ctx->saved_data["activation"].toInt());
    const at::Tensor& grad = grads[0];
    const int64_t h = x.size(-1) / 2;
    const at::Tensor x1 = x.narrow(-1, 0, h), x2 = x.narrow(-1, h, h);
    at::Tensor dx = at::empty_like(x);
    at::Tensor dx1 = dx.narrow(-1, 0, h), dx2 = dx.narrow(-1, h, h);
    // Written in place into the two halves of dx: no temporary beyond dx itself.
    activate_out(dx1, x2, a);  // d/dx1 = grad * act(x2)
    dx1.mul_(grad);
    at::mul_out(dx2, grad, x1);  // d/dx2 = grad * x1 * act'(x2)
    activation_backward_out(dx2, dx2, x2, a);
    return {dx, at::Tensor()};
  }
};

}  // namespace

namespace functional {

at::Tensor fused_glu(const at::Tensor& x, GLUActivation activation) {
  check_glu_input(x);
  return FusedGLUFunction::apply(x, static_cast<int64_t>(activation));
}

at::Tensor geglu(const at::Tensor& x, bool tanh_approximation) {
  return fused_glu(x, tanh_approximation ? GLUActivation::kGELUTanh : GLUActivation::kGELU);
}

at::Tensor swiglu(const at::Tensor& x) { return fused_glu(x, GLUActivation::kSiLU); }

at::Tensor glu_reference(const at::Tensor& x, GLUActivation activation) {
  check_glu_input(x);
  const int64_t h = x.size(-1) / 2;
  return x.narrow(-1, 0, h) * activate(x.narrow(-1, h, h), activation);
}

}  // namespace functional

FusedGLUImpl::FusedGLUImpl(FusedGLUOptions options_) : options(options_) {}

void FusedGLUImpl::pretty_print(std::ostream& stream) const {
  stream << "edkm::FusedGLU(activation=" << to_string(options.activation()) << ")";
}

at::Tensor FusedGLUImpl::forward(const at::Tensor& x) { return functional::fused_glu(x, options.activation()); }

void GLUFeedForwardOptions::validate() const {
  TORCH_CHECK(d_model() > 0, "edkm: GLUFeedForwardOptions: d_model must be positive, got ", d_model());
  TORCH_CHECK(hidden() > 0, "edkm: GLUFeedForwardOptions: hidden must be positive, got ", hidden());
}

GLUFeedForwardImpl::GLUFeedForwardImpl(GLUFeedForwardOptions options_) : options(options_) { reset(); }

void GLUFeedForwardImpl::reset() {
  options.validate();
  up = register_module(
      "up", torch::nn::Linear(torch::nn::LinearOptions(options.d_model(), 2 * options.hidden()).bias(options.bias())));
  down = register_module(
      "down", torch::nn::Linear(torch::nn::LinearOptions(options.hidden(), options.d_model()).bias(options.bias())));
}

void GLUFeedForwardImpl::pretty_print(std::ostream& stream) const {
  stream << "edkm::GLUFeedForward(d_model=" << options.d_model() << ", hidden=" << options.hidden()
         << ", activation=" << to_string(options.activation()) << ", bias=" << (options.bias() ? "true" : "false")
         << ", fused=" << (options.fused() ? "true" : "false") << ")";
}

at::Tensor GLUFeedForwardImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == options.d_model(),
              "edkm: GLUFeedForward: input's last dim must be d_model=", options.d_model(), ", got shape ", x.sizes());
  at::Tensor u = up->forward(x);
  return down->forward(options.fused() ? functional::fused_glu(u, options.activation())
                                       : functional::glu_reference(u, options.activation()));
}

}  // namespace edkm
