#pragma once
// Knowledge distillation: KL on temperature-softened logits (scaled by T^2), MSE on hidden
// states, and a teacher/student helper whose teacher runs under no-grad.
//
// Memory: the teacher's forward builds no autograd graph, so none of its activations are kept;
// only its outputs live until the loss is computed.
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/arg.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <vector>

#include "edkm/export.h"

namespace edkm {
namespace functional {

/// T^2 * KL(softmax(teacher / T) || softmax(student / T)) over the last dim (classes), summed
/// over classes and averaged over the rows (all other dims): PyTorch's kl_div "batchmean" on
/// log-probabilities, times T^2 so gradient magnitudes do not shrink with T. The teacher's
/// logits are treated as constants (no gradient flows to them). 16-bit logits are computed in
/// fp32 (the loss is fp32; the gradient reaches them in their dtype).
///
/// Example:
///   auto loss = edkm::functional::distillation_kl_loss(student_logits, teacher_logits, 2.0);
EDKM_API at::Tensor distillation_kl_loss(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                                         double temperature = 1.0);

/// Mean squared error between hidden states of the same shape (teacher treated as constant;
/// 16-bit states in fp32).
EDKM_API at::Tensor hidden_state_mse_loss(const at::Tensor& student_hidden, const at::Tensor& teacher_hidden);

}  // namespace functional

/// Options of functional::lm_head_loss.
struct EDKM_API LmHeadLossOptions {
  /// Rows (tokens) whose logits exist at a time: the peak holds a few [chunk, vocab] fp32
  /// buffers instead of [tokens, vocab] ones. Default 256.
  TORCH_ARG(int64_t, chunk) = 256;
  /// Weight of the distillation KL (with a teacher); the cross entropy gets 1 - alpha. Default 0.5.
  TORCH_ARG(double, alpha) = 0.5;
  /// Temperature of the KL. Default 2.
  TORCH_ARG(double, temperature) = 2.0;
  /// The dtype of the two logit matmuls (hidden W^T, and the teacher's): kFloat (default), or
  /// kBFloat16 / kHalf as autocast runs a Linear: the inputs rounded to it, the logits in it, then
  /// upcast to fp32 for the softmaxes and losses. Rounding logits of ~20 to bf16 moves them by up
  /// to 0.06, so the default keeps them fp32 (LibTorch's CPU matmul has no bf16 x bf16 -> fp32 form).
  TORCH_ARG(at::ScalarType, logits_matmul_dtype) = at::kFloat;
  /// The dtype of the two gradient matmuls (d hidden = G W, d W = G^T hidden, G = d loss / d
  /// logits): kFloat (default), or kBFloat16 / kHalf, as autocast runs a Linear's backward: G, W and
  /// hidden rounded to it, the products in it, d W summed over the chunks in fp32. The logits, the
  /// losses and G are computed in fp32 either way. kBFloat16 halves the time of these matmuls
  /// on CPUs with AVX512-BF16 (edkm_llama_compress uses it under --autocast bf16).
  TORCH_ARG(at::ScalarType, gradient_matmul_dtype) = at::kFloat;

 public:
  /// Throws on a chunk < 1, an alpha outside [0, 1], a temperature that is not positive and finite,
  /// or a logits / gradient matmul dtype other than kFloat, kBFloat16 and kHalf.
  void validate() const;
};

namespace functional {

/// The language-model head and its loss in one, a chunk of tokens at a time: equal to
///   logits = hidden W^T;  ce = causal_lm_loss(logits, tokens)          (edkm/models/llama.h)
///   alpha * distillation_kl_loss(logits, teacher_hidden W_t^T, T) + (1 - alpha) * ce   (teacher given)
/// or ce alone (no teacher), without ever holding the [batch x seq, vocab] logits, their
/// log-probabilities or gradients: a chunk's logits, softmax and gradient are computed and
/// dropped, and the gradients of hidden and W (fp32 [vocab, dim] when W requires grad) are kept
/// for the backward. The cross entropy averages over the batch x (seq - 1) next-token positions,
/// the KL over all batch x seq positions, as those functions do. Logits are computed in fp32
/// (16-bit hidden states and weights are upcast per chunk). The teacher is a constant. On an x86-64
/// CPU with AVX2 or AVX-512 the element-wise part (both softmaxes, the losses, d loss / d logits)
/// runs fused, three passes over a chunk's logits instead of ~15 ATen operations: on SmolLM2's
/// head (1,024 tokens, 49,152 classes, a teacher) 2.5 -> 1.7-2.0 s and a peak of 542 -> 220 MiB,
/// 0.89 s with the options' bf16 matmuls (benchmarks/results/head_loss_cpu.md);
/// EDKM_HEAD_LOSS_ISA=none|avx2|avx512 caps the choice.
///
/// hidden [B, S, D], weight [V, D], tokens [B, S] int64; teacher_hidden [B, S, D_t] and
/// teacher_weight [V, D_t] (the teacher may be wider), or both undefined. Gradients are computed
/// only for what autograd will ask (none under no-grad, where the call costs the loss alone).
///
/// attention_mask [B, S] (integer or bool, e.g. edkm::PaddedBatch::attention_mask): a 0 is a pad.
/// A pad is not predicted, predicts nothing and has no KL term; the averages are over the tokens
/// (KL) and the (token, next token) pairs (cross entropy) the mask keeps, as Hugging Face's
/// ignore_index does. A pad's token may be any value, and its hidden rows are read as 0 (a NaN there stays out).
///
/// Example (the tied head of a LLaMA, distilled from a frozen copy):
///   auto h = model->model(tokens);
///   auto loss = edkm::functional::lm_head_loss(h, model->model->embed_tokens->weight, tokens, t_hidden,
///                                              teacher->model->embed_tokens->weight);
EDKM_API at::Tensor lm_head_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& tokens,
                                 const at::Tensor& teacher_hidden = {}, const at::Tensor& teacher_weight = {},
                                 const LmHeadLossOptions& options = {}, const at::Tensor& attention_mask = {});

}  // namespace functional

/// Options of Distiller.
struct EDKM_API DistillerOptions {
  /// Softmax temperature T of the KL term; > 0. Default 2.
  TORCH_ARG(double, temperature) = 2.0;
  /// Weight of the KL term against the hard-label cross entropy, in [0, 1]; used when labels are
  /// given (else the KL term has weight 1). Default 0.5.
  TORCH_ARG(double, alpha) = 0.5;
  /// Weight of the hidden-state MSE (mean over the hidden-state pairs); >= 0. Default 0.
  TORCH_ARG(double, hidden_weight) = 0.0;

 public:
  /// Throws on a temperature <= 0, alpha outside [0, 1] or a negative hidden_weight.
  void validate() const;
};

/// What one distillation step computed.
struct EDKM_API DistillationOutput {
  at::Tensor loss;                          ///< the weighted total, differentiable for the student
  at::Tensor kl_loss;                       ///< T^2-scaled KL
  at::Tensor ce_loss;                       ///< hard-label cross entropy (undefined without labels)
  at::Tensor hidden_loss;                   ///< mean hidden-state MSE (undefined without hidden states)
  std::vector<at::Tensor> student_outputs;  ///< {logits, hidden states...}
  std::vector<at::Tensor> teacher_outputs;  ///< {logits, hidden states...}, no autograd history
};

/// Runs a teacher and a student on the same input and computes the distillation loss. Each
/// forward returns {logits [..., classes], hidden states...}; the i-th hidden states of both are
/// compared when hidden_weight > 0. The teacher runs under at::NoGradGuard: no graph, no
/// activations kept, no gradients to its parameters.
///
/// Example:
///   edkm::Distiller distill = edkm::make_distiller(teacher, student, edkm::DistillerOptions().temperature(4));
///   auto out = distill.step(x, labels);
///   out.loss.backward();  // student gradients only
class EDKM_API Distiller {
 public:
  using Forward = std::function<std::vector<at::Tensor>(const at::Tensor&)>;
  Distiller(Forward teacher, Forward student, DistillerOptions options = {});

  /// The teacher's outputs, computed under no-grad.
  std::vector<at::Tensor> teacher_forward(const at::Tensor& input) const;
  /// Teacher (no-grad) and student forward, and the losses. `labels`: class indices of the
  /// logits' rows (optional).
  DistillationOutput step(const at::Tensor& input, const at::Tensor& labels = {}) const;

  const DistillerOptions& options() const { return options_; }

 private:
  Forward teacher_, student_;
  DistillerOptions options_;
};

/// A Distiller over two modules whose forward(Tensor) returns the logits; puts the teacher in
/// eval mode.
template <typename Teacher, typename Student>
Distiller make_distiller(torch::nn::ModuleHolder<Teacher> teacher, torch::nn::ModuleHolder<Student> student,
                         DistillerOptions options = {}) {
  teacher->eval();
  return Distiller([teacher](const at::Tensor& x) mutable { return std::vector<at::Tensor>{teacher->forward(x)}; },
                   [student](const at::Tensor& x) mutable { return std::vector<at::Tensor>{student->forward(x)}; },
                   options);
}

}  // namespace edkm
