// Distillation losses and the teacher/student helper.
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/mse_loss.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include "edkm/nn/distill.h"
#include "kernels/cpu/head_loss_kernel.h"

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

namespace {

// Vocabulary rows of a head converted to another dtype at a time (a 16-bit teacher's head to fp32,
// the head to logits_matmul_dtype or gradient_matmul_dtype): no whole converted copy is held.
constexpr int64_t kHeadBlock = 8192;

// x W^T as fp32 [n, V] (x: fp32 [n, D]), the products in `dtype`: at once when W already is in it,
// else with W converted kHeadBlock rows at a time, so that no converted copy of a whole head is held
// (a bf16 teacher's head in fp32, an fp32 head in bf16).
at::Tensor head_logits(const at::Tensor& x, const at::Tensor& W, at::ScalarType dtype) {
  const at::Tensor xd = x.to(dtype);
  if (W.scalar_type() == dtype) return xd.mm(W.t()).to(at::kFloat);
  const int64_t V = W.size(0);
  at::Tensor out = at::empty({x.size(0), V}, x.options().dtype(at::kFloat));
  for (int64_t v0 = 0; v0 < V; v0 += kHeadBlock) {
    const int64_t nv = std::min(kHeadBlock, V - v0);
    out.narrow(1, v0, nv).copy_(xd.mm(W.narrow(0, v0, nv).to(dtype).t()));
  }
  return out;
}

// The loss of lm_head_loss and its gradients, computed together a chunk of rows at a time (the
// gradients in the forward: what the backward would recompute, it only scales).
class LmHeadLossFunction : public torch::autograd::Function<LmHeadLossFunction> {
 public:
  // The teacher's tensors are constants, passed beside the autograd inputs (an undefined tensor
  // cannot be one), with which gradients the caller's autograd will ask for.
  struct Extra {
    at::Tensor teacher_hidden, teacher_weight;
    bool grad_hidden = false, grad_weight = false;
    at::Tensor rows, targets;  // [R] fp32: 1 on rows in the KL / with a next-token target
    at::Tensor pads;           // [R, 1] bool, true on pads (their hidden rows read as 0); undefined: none
    double n_rows = 0, n_targets = 0;
  };
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& tokens, const Extra* extra, const LmHeadLossOptions* options) {
    const at::Tensor& teacher_hidden = extra->teacher_hidden;
    const at::Tensor& teacher_weight = extra->teacher_weight;
    const auto& o = *options;
    const int64_t B = hidden.size(0), S = hidden.size(1), D = hidden.size(2), V = weight.size(0);
    const int64_t Dt = teacher_hidden.defined() ? teacher_hidden.size(2) : 0;
    const int64_t R = B * S;
    const double n_ce = extra->n_targets, n_kl = extra->n_rows;
    const bool teacher = teacher_hidden.defined();
    const double alpha = teacher ? o.alpha() : 0.0, T = o.temperature();
    const at::Tensor h = hidden.reshape({R, D});
    const at::Tensor th = teacher ? teacher_hidden.reshape({R, Dt}) : at::Tensor();
    const at::Tensor tw = teacher ? teacher_weight.detach() : at::Tensor();
    const at::Tensor tok = tokens.reshape({R});
    const bool want_dh = extra->grad_hidden, want_dw = extra->grad_weight, want_g = want_dh || want_dw;
    at::Tensor dh = want_dh ? at::empty({R, D}, h.options().dtype(at::kFloat)) : at::Tensor();
    at::Tensor dw = want_dw ? at::zeros({V, D}, weight.options().dtype(at::kFloat)) : at::Tensor();
    // The logit and gradient matmuls in their options' dtypes; the head in fp32 (no copy for an fp32
    // head) only where one of them is fp32.
    const at::ScalarType ldt = o.logits_matmul_dtype(), gdt = o.gradient_matmul_dtype();
    const bool low = gdt != at::kFloat;
    const at::Tensor w = ldt == at::kFloat || (want_g && !low) ? weight.to(at::kFloat) : at::Tensor();
    const auto f64 = h.options().dtype(at::kDouble);
    at::Tensor ce_sum = at::zeros({}, f64), kl_sum = at::zeros({}, f64);
    // Row r predicts token r + 1 where extra->targets says so (not the last row of a sequence, whose
    // rolled "next" is the next sequence's first token, a valid index, masked out; not a pad).
    const at::Tensor next_tok = tok.roll(-1);
    // The element-wise part fused on CPU (kernels/cpu/head_loss_kernel.h): 3 passes over a chunk's
    // logits instead of ~15; elsewhere (CUDA, a CPU without AVX2) the ATen form below.
    const bool fused = h.device().is_cpu() && kernels::head_loss_isa() != kernels::HeadLossIsa::kNone;
    for (int64_t r0 = 0; r0 < R; r0 += o.chunk()) {
      const int64_t n = std::min(o.chunk(), R - r0);
      // A pad's hidden row is read as 0: whatever it holds (NaN, inf) must not reach the sums, where
      // a multiplication by its 0 weight would keep a NaN.
      const at::Tensor pad = extra->pads.defined() ? extra->pads.narrow(0, r0, n) : at::Tensor();
      at::Tensor hc = h.narrow(0, r0, n).to(at::kFloat);
      if (pad.defined()) hc = hc.masked_fill(pad, 0.0);
      at::Tensor s = ldt == at::kFloat ? hc.mm(w.t()) : head_logits(hc, weight.detach(), ldt);  // [n, V] fp32
      at::Tensor tl;  // the teacher's logits [n, V] fp32
      if (alpha > 0.0) {
        at::Tensor thc = th.narrow(0, r0, n).to(at::kFloat);
        if (pad.defined()) thc = thc.masked_fill(pad, 0.0);
        tl = head_logits(thc, tw, ldt);
      }
      at::Tensor g;  // d loss / d s
      if (fused) {
        const at::Tensor target = next_tok.narrow(0, r0, n).contiguous();
        const at::Tensor ce_coef = extra->targets.narrow(0, r0, n) * static_cast<float>((1.0 - alpha) / n_ce);
        const at::Tensor kl_coef = extra->rows.narrow(0, r0, n) * static_cast<float>(alpha * T / n_kl);
        const at::Tensor ce_rows = at::empty({n}, f64), kl_rows = at::empty({n}, f64);
        kernels::HeadLossRows q;
        q.s = s.data_ptr<float>();
        q.t = tl.defined() ? tl.data_ptr<float>() : nullptr;
        q.rows = n;
        q.vocab = V;
        q.target = target.data_ptr<int64_t>();
        q.ce_coef = ce_coef.data_ptr<float>();
        q.kl_coef = kl_coef.data_ptr<float>();
        q.temperature = static_cast<float>(T);
        q.ce = alpha < 1.0;
        q.kl = alpha > 0.0;
        q.grad = want_g;
        q.ce_out = ce_rows.data_ptr<double>();
        q.kl_out = kl_rows.data_ptr<double>();
        kernels::head_loss_rows(q);
        if (q.ce) ce_sum.add_(ce_rows.sum());
        if (q.kl) kl_sum.add_(kl_rows.sum());
        if (want_g) g = s;
      } else {
        if (alpha < 1.0) {
          const at::Tensor hasf = extra->targets.narrow(0, r0, n).unsqueeze(1);
          const at::Tensor target = next_tok.narrow(0, r0, n);
          const at::Tensor lse = s.logsumexp(1, /*keepdim=*/true);
          const at::Tensor picked = s.gather(1, target.unsqueeze(1));
          ce_sum.add_(((lse - picked) * hasf).sum(at::kDouble));
          if (want_g) {
            g = (s - lse).exp_().mul_(hasf);  // softmax on rows with a target, 0 elsewhere
            g.scatter_add_(1, target.unsqueeze(1), -hasf);
            g.mul_((1.0 - alpha) / n_ce);
          }
        }
        if (alpha > 0.0) {
          const at::Tensor log_p = at::log_softmax(tl.div_(T), -1);
          const at::Tensor log_q = at::log_softmax(s / T, -1);
          const at::Tensor p = log_p.exp();
          // As distillation_kl_loss: a class of teacher probability 0 adds 0 (not 0 * inf).
          const at::Tensor rowf = extra->rows.narrow(0, r0, n).unsqueeze(1);
          at::Tensor terms = (log_p - log_q).mul_(p);
          terms.masked_fill_(p.eq(0), 0.0);
          kl_sum.add_(terms.mul_(rowf).sum(at::kDouble));
          terms.reset();
          if (want_g) {
            // d/ds of T^2 / R * sum p (log p - log q(s / T)) = T / R * (q - p).
            at::Tensor gk = log_q.exp_().sub_(p).mul_(rowf).mul_(alpha * T / n_kl);
            g = g.defined() ? g.add_(gk) : gk;
          }
        }
      }
      tl.reset();
      s.reset();
      if (want_g && low) {
        // By blocks of 8,192 vocabulary rows, so that no 16-bit copy of the whole head (or of its
        // gradient) is held: each block's products in gdt, summed into d hidden / d W in fp32.
        const at::Tensor hl = want_dw ? hc.to(gdt) : at::Tensor();
        at::Tensor dhc = want_dh ? dh.narrow(0, r0, n).zero_() : at::Tensor();
        for (int64_t v0 = 0; v0 < V; v0 += kHeadBlock) {
          const int64_t nv = std::min(kHeadBlock, V - v0);
          const at::Tensor gb = g.narrow(1, v0, nv).to(gdt);
          if (want_dh) dhc.add_(gb.mm(weight.detach().narrow(0, v0, nv).to(gdt)));
          if (want_dw) dw.narrow(0, v0, nv).add_(gb.t().mm(hl));
        }
        continue;
      }
      if (want_dh) dh.narrow(0, r0, n).copy_(g.mm(w));
      if (want_dw) dw.addmm_(g.t(), hc);
    }
    at::Tensor loss = ce_sum * ((1.0 - alpha) / n_ce);
    if (alpha > 0) loss = loss + kl_sum * (alpha * T * T / n_kl);
    if (want_dh) ctx->saved_data["dh"] = dh.reshape(hidden.sizes()).to(hidden.scalar_type());
    if (want_dw) ctx->saved_data["dw"] = dw.to(weight.scalar_type());
    return loss.to(at::kFloat);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    // The loss is a scalar: its incoming gradient scales what the forward computed.
    torch::autograd::variable_list out(5);
    if (ctx->needs_input_grad(0) && ctx->saved_data.count("dh")) {
      const at::Tensor dh = ctx->saved_data["dh"].toTensor();
      out[0] = dh * grads[0].to(dh.scalar_type());
    }
    if (ctx->needs_input_grad(1) && ctx->saved_data.count("dw")) {
      const at::Tensor dw = ctx->saved_data["dw"].toTensor();
      out[1] = dw * grads[0].to(dw.scalar_type());
    }
    return out;
  }
};

}  // namespace

at::Tensor lm_head_loss(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& tokens,
                        const at::Tensor& teacher_hidden, const at::Tensor& teacher_weight,
                        const LmHeadLossOptions& options, const at::Tensor& attention_mask) {
  options.validate();
  TORCH_CHECK(hidden.defined() && weight.defined() && tokens.defined(),
              "edkm: lm_head_loss: hidden, weight and tokens must be defined");
  TORCH_CHECK(hidden.dim() == 3 && weight.dim() == 2 && weight.size(1) == hidden.size(2),
              "edkm: lm_head_loss: hidden must be [batch, seq, dim] and weight [vocab, dim], got ", hidden.sizes(),
              " and ", weight.sizes());
  TORCH_CHECK(hidden.is_floating_point() && weight.is_floating_point(),
              "edkm: lm_head_loss: hidden and weight must be floating point");
  TORCH_CHECK(tokens.scalar_type() == at::kLong && tokens.dim() == 2 && tokens.size(0) == hidden.size(0) &&
                  tokens.size(1) == hidden.size(1) && tokens.size(1) >= 2 && tokens.size(0) >= 1,
              "edkm: lm_head_loss: tokens must be int64 [batch >= 1, seq >= 2] matching hidden ", hidden.sizes(),
              ", got ", tokens.scalar_type(), " ", tokens.sizes());
  TORCH_CHECK(hidden.device() == weight.device() && tokens.device() == hidden.device(),
              "edkm: lm_head_loss: hidden, weight and tokens must be on one device");
  TORCH_CHECK(teacher_hidden.defined() == teacher_weight.defined(),
              "edkm: lm_head_loss: give both the teacher's hidden states and its head weight, or neither");
  if (teacher_hidden.defined()) {
    TORCH_CHECK(teacher_hidden.dim() == 3 && teacher_hidden.size(0) == hidden.size(0) &&
                    teacher_hidden.size(1) == hidden.size(1) && teacher_weight.dim() == 2 &&
                    teacher_weight.size(0) == weight.size(0) && teacher_weight.size(1) == teacher_hidden.size(2) &&
                    teacher_hidden.is_floating_point() && teacher_weight.is_floating_point() &&
                    teacher_hidden.device() == hidden.device() && teacher_weight.device() == hidden.device(),
                "edkm: lm_head_loss: the teacher's hidden states ", teacher_hidden.sizes(), " and head ",
                teacher_weight.sizes(), " must be [batch, seq, dim_t] and [vocab, dim_t] for the student's ",
                hidden.sizes(), " and ", weight.sizes(), " (floating point, same device)");
  }
  // Rows in the KL, and rows with a next-token target: all but each sequence's last, or as the mask
  // says (a pad neither predicts nor is predicted; its token may be anything, it is read as 0).
  const int64_t B = hidden.size(0), S = hidden.size(1), R = B * S;
  const auto f32 = hidden.options().dtype(at::kFloat);
  at::Tensor rows = at::ones({R}, f32);
  at::Tensor tok = tokens;
  if (attention_mask.defined()) {
    TORCH_CHECK(attention_mask.sizes() == tokens.sizes() && attention_mask.device() == tokens.device() &&
                    !attention_mask.is_floating_point() && !attention_mask.is_complex(),
                "edkm: lm_head_loss: attention_mask must be an integer or bool [batch, seq] tensor like the tokens ",
                tokens.sizes(), ", got ", attention_mask.scalar_type(), " ", attention_mask.sizes());
    const at::Tensor m = attention_mask.ne(0);
    rows = m.reshape({R}).to(at::kFloat);
    tok = tokens.masked_fill(m.logical_not(), 0);
  }
  const at::Tensor last = at::arange(R, tokens.options()).remainder(S).eq(S - 1).to(at::kFloat);
  const at::Tensor targets = rows * rows.roll(-1) * (1 - last);
  const double n_rows = rows.sum().item<double>(), n_targets = targets.sum().item<double>();
  const bool teacher_given = teacher_hidden.defined();
  TORCH_CHECK(n_rows > 0, "edkm: lm_head_loss: the attention mask leaves no token");
  TORCH_CHECK(n_targets > 0 || (teacher_given && options.alpha() == 1.0),
              "edkm: lm_head_loss: no token has a next token to predict (every sequence has length 1)");
  const int64_t lo = tok.min().item<int64_t>(), hi = tok.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < weight.size(0), "edkm: lm_head_loss: token ", lo < 0 ? lo : hi,
              " outside the vocabulary 0..", weight.size(0) - 1);
  LmHeadLossFunction::Extra extra;
  extra.teacher_hidden = teacher_hidden.defined() ? teacher_hidden.detach() : teacher_hidden;
  extra.teacher_weight = teacher_weight.defined() ? teacher_weight.detach() : teacher_weight;
  // Gradients only for what autograd will ask (none under no-grad: evaluation pays the loss alone).
  const bool grad = at::GradMode::is_enabled();
  extra.grad_hidden = grad && hidden.requires_grad();
  extra.grad_weight = grad && weight.requires_grad();
  extra.rows = rows;
  extra.targets = targets;
  if (n_rows < static_cast<double>(R)) extra.pads = rows.eq(0).unsqueeze(1);
  extra.n_rows = n_rows;
  extra.n_targets = std::max(n_targets, 1.0);  // 0 only with alpha 1, where the CE is not computed
  return LmHeadLossFunction::apply(hidden, weight, tok, &extra, &options);
}

}  // namespace functional

namespace {
// The temperature and the KL / cross-entropy mix both option sets take.
void check_kl_mix(const char* who, double temperature, double alpha) {
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature), "edkm: ", who,
              ": temperature must be positive and finite, got ", temperature);
  TORCH_CHECK(alpha >= 0 && alpha <= 1, "edkm: ", who, ": alpha must be in [0, 1], got ", alpha);
}
}  // namespace

void LmHeadLossOptions::validate() const {
  TORCH_CHECK(chunk() >= 1, "edkm: LmHeadLossOptions: chunk must be >= 1, got ", chunk());
  check_kl_mix("LmHeadLossOptions", temperature(), alpha());
  for (const auto& [name, d] : {std::make_pair("logits_matmul_dtype", logits_matmul_dtype()),
                                std::make_pair("gradient_matmul_dtype", gradient_matmul_dtype())})
    TORCH_CHECK(d == at::kFloat || d == at::kBFloat16 || d == at::kHalf, "edkm: LmHeadLossOptions: ", name,
                " must be Float, BFloat16 or Half, got ", d);
}

void DistillerOptions::validate() const {
  check_kl_mix("DistillerOptions", temperature(), alpha());
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
