// Distillation losses and the teacher/student helper.
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/mse_loss.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include "edkm/nn/distill.h"

#include <cmath>
#include <limits>

namespace edkm {
namespace functional {

at::Tensor distillation_kl_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                                double temperature) {
  TORCH_CHECK(student_logits.defined() && teacher_logits.defined(),
              "edkm: distillation_kl_loss: logits must be defined");
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "edkm: distillation_kl_loss: temperature must be positive and finite, got ", temperature);
  TORCH_CHECK(student_logits.dim() >= 1 && student_logits.sizes() == teacher_logits.sizes(),
              "edkm: distillation_kl_loss: student logits ", student_logits.sizes(), " and teacher logits ",
              teacher_logits.sizes(), " must have one shape [..., classes]");
  TORCH_CHECK(student_logits.is_floating_point() && teacher_logits.is_floating_point(),
              "edkm: distillation_kl_loss: logits must be floating point");
  const int64_t rows = student_logits.size(-1) ? student_logits.numel() / student_logits.size(-1) : 0;
  TORCH_CHECK(rows > 0, "edkm: distillation_kl_loss: logits are empty");
  // 16-bit logits are upcast first: log-probabilities rounded to bf16 made the KL of close
  // distributions 5% off and its gradient 20% (cosine 0.94 to fp64), 49,152 classes, T = 2.
  const auto ct = at::promote_types(student_logits.scalar_type(), at::kFloat);
  const at::Tensor log_p = at::log_softmax(teacher_logits.detach().to(ct) / temperature, -1);
  const at::Tensor log_q = at::log_softmax(student_logits.to(ct) / temperature, -1);
  // A class the teacher gives probability 0 (a logit of -inf: a masked vocabulary entry) adds 0,
  // as 0 log 0 = 0 in at::kl_div; the plain product would be 0 * inf = NaN.
  const at::Tensor terms = at::where(log_p > -std::numeric_limits<double>::infinity(), log_p.exp() * (log_p - log_q),
                                     at::zeros({}, log_p.options()));
  return terms.sum() * (temperature * temperature / static_cast<double>(rows));
}

at::Tensor hidden_state_mse_loss(const at::Tensor& student_hidden, const at::Tensor& teacher_hidden) {
  TORCH_CHECK(student_hidden.defined() && teacher_hidden.defined(),
              "edkm: hidden_state_mse_loss: hidden states must be defined");
  TORCH_CHECK(student_hidden.sizes() == teacher_hidden.sizes(), "edkm: hidden_state_mse_loss: student hidden ",
              student_hidden.sizes(), " and teacher hidden ", teacher_hidden.sizes(), " must have one shape");
  const auto ct = at::promote_types(student_hidden.scalar_type(), at::kFloat);  // 16-bit: in fp32, as the KL
  return at::mse_loss(student_hidden.to(ct), teacher_hidden.detach().to(ct));
}

}  // namespace functional

void DistillerOptions::validate() const {
  TORCH_CHECK(temperature() > 0 && std::isfinite(temperature()),
              "edkm: DistillerOptions: temperature must be positive and finite, got ", temperature());
  TORCH_CHECK(alpha() >= 0 && alpha() <= 1, "edkm: DistillerOptions: alpha must be in [0, 1], got ", alpha());
  TORCH_CHECK(hidden_weight() >= 0 && std::isfinite(hidden_weight()),
              "edkm: DistillerOptions: hidden_weight must be >= 0, got ", hidden_weight());
}

Distiller::Distiller(Forward teacher, Forward student, DistillerOptions options)
    : teacher_(std::move(teacher)), student_(std::move(student)), options_(options) {
  TORCH_CHECK(teacher_ && student_, "edkm: Distiller: teacher and student forwards must be set");
  options_.validate();
}

std::vector<at::Tensor> Distiller::teacher_forward(const at::Tensor& input) const {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> outs = teacher_(input);
  for (auto& t : outs)
    if (t.defined()) t = t.detach();
  return outs;
}

DistillationOutput Distiller::step(const at::Tensor& input, const at::Tensor& labels) const {
  DistillationOutput out;
  out.teacher_outputs = teacher_forward(input);
  out.student_outputs = student_(input);
  TORCH_CHECK(!out.teacher_outputs.empty() && !out.student_outputs.empty(),
              "edkm: Distiller: forwards must return at least the logits");
  const at::Tensor& s = out.student_outputs[0];
  out.kl_loss = functional::distillation_kl_loss(s, out.teacher_outputs[0], options_.temperature());
  out.loss = out.kl_loss;
  if (labels.defined()) {
    TORCH_CHECK(labels.numel() * s.size(-1) == s.numel(), "edkm: Distiller: labels ", labels.sizes(),
                " must hold one class index per row of the logits ", s.sizes());
    TORCH_CHECK(at::isIntegralType(labels.scalar_type(), /*includeBool=*/false),
                "edkm: Distiller: labels must be integer class indices, got ", labels.scalar_type());
    out.ce_loss = at::cross_entropy_loss(s.reshape({-1, s.size(-1)}), labels.reshape({-1}).to(at::kLong));
    out.loss = out.kl_loss * options_.alpha() + out.ce_loss * (1.0 - options_.alpha());
  }
  if (options_.hidden_weight() > 0) {
    TORCH_CHECK(out.student_outputs.size() == out.teacher_outputs.size(),
                "edkm: Distiller: hidden_weight > 0 pairs the hidden states, but the student returned ",
                out.student_outputs.size(), " outputs and the teacher ", out.teacher_outputs.size());
    const size_t pairs = out.student_outputs.size() - 1;
    TORCH_CHECK(pairs > 0, "edkm: Distiller: hidden_weight > 0 needs hidden states after the logits in both outputs");
    at::Tensor sum;
    for (size_t i = 1; i <= pairs; ++i) {
      at::Tensor l = functional::hidden_state_mse_loss(out.student_outputs[i], out.teacher_outputs[i]);
      sum = sum.defined() ? sum + l : l;
    }
    out.hidden_loss = sum / static_cast<double>(pairs);
    out.loss = out.loss + out.hidden_loss * options_.hidden_weight();
  }
  return out;
}

}  // namespace edkm
