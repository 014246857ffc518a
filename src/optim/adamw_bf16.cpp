#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/serialize/archive.h>

#include <cmath>

#include "edkm/optim/adamw_bf16.h"

namespace edkm::optim {

AdamWBf16Options::AdamWBf16Options(double lr) : lr_(lr) {}

void AdamWBf16Options::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(lr);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(betas);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(eps);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(weight_decay);
}

void AdamWBf16Options::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, lr);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(betas_t, betas);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, eps);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(double, weight_decay);
}

double AdamWBf16Options::get_lr() const { return lr(); }
void AdamWBf16Options::set_lr(const double lr) { this->lr(lr); }

void AdamWBf16ParamState::serialize(torch::serialize::OutputArchive& archive) const {
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(step);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(exp_avg);
  _TORCH_OPTIM_SERIALIZE_TORCH_ARG(exp_avg_sq);
}

void AdamWBf16ParamState::serialize(torch::serialize::InputArchive& archive) {
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(int64_t, step);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(at::Tensor, exp_avg);
  _TORCH_OPTIM_DESERIALIZE_TORCH_ARG(at::Tensor, exp_avg_sq);
}

namespace {
void check_options(const AdamWBf16Options& o) {
  TORCH_CHECK(o.lr() >= 0, "edkm::optim::AdamWBf16: lr must be >= 0, got ", o.lr());
  TORCH_CHECK(o.eps() >= 0, "edkm::optim::AdamWBf16: eps must be >= 0, got ", o.eps());
  const auto [b1, b2] = o.betas();
  TORCH_CHECK(0 <= b1 && b1 < 1, "edkm::optim::AdamWBf16: betas[0] must be in [0, 1), got ", b1);
  TORCH_CHECK(0 <= b2 && b2 < 1, "edkm::optim::AdamWBf16: betas[1] must be in [0, 1), got ", b2);
  TORCH_CHECK(o.weight_decay() >= 0, "edkm::optim::AdamWBf16: weight_decay must be >= 0, got ", o.weight_decay());
}
}  // namespace

AdamWBf16::AdamWBf16(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, AdamWBf16Options defaults)
    : Optimizer(param_groups, std::make_unique<AdamWBf16Options>(defaults)) {
  check_options(defaults);
}

at::Tensor AdamWBf16::step(LossClosure closure) {
  at::NoGradGuard no_grad;
  at::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  // In chunks: the fp32 temporaries stay small next to a large embedding.
  constexpr int64_t kChunk = int64_t{1} << 22;
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const AdamWBf16Options&>(group.options());
    check_options(o);
    const auto [b1, b2] = o.betas();
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      TORCH_CHECK(!p.grad().is_sparse(), "edkm::optim::AdamWBf16 does not support sparse gradients");
      auto it = state_.find(p.unsafeGetTensorImpl());
      if (it == state_.end()) {
        auto st = std::make_unique<AdamWBf16ParamState>();
        st->exp_avg(at::zeros_like(p, p.options().dtype(at::kBFloat16), at::MemoryFormat::Contiguous));
        st->exp_avg_sq(at::zeros_like(p, p.options().dtype(at::kBFloat16), at::MemoryFormat::Contiguous));
        it = state_.emplace(p.unsafeGetTensorImpl(), std::move(st)).first;
      }
      auto& st = static_cast<AdamWBf16ParamState&>(*it->second);
      TORCH_CHECK(st.exp_avg().sizes() == p.sizes() && st.exp_avg_sq().sizes() == p.sizes(),
                  "edkm::optim::AdamWBf16: the loaded state of a parameter has shape ", st.exp_avg().sizes(),
                  ", the parameter ", p.sizes());
      st.step(st.step() + 1);
      const double c1 = 1 - std::pow(b1, static_cast<double>(st.step()));
      const double c2 = 1 - std::pow(b2, static_cast<double>(st.step()));
      // Flat views: the parameter itself when contiguous, else a contiguous copy written back.
      const bool contiguous = p.is_contiguous();
      at::Tensor pf = contiguous ? p.view({-1}) : p.contiguous().view({-1});
      const at::Tensor gf = p.grad().contiguous().view({-1});
      at::Tensor mf = st.exp_avg().view({-1}), vf = st.exp_avg_sq().view({-1});
      for (int64_t off = 0; off < pf.numel(); off += kChunk) {
        const int64_t n = std::min(kChunk, pf.numel() - off);
        const at::Tensor g = gf.narrow(0, off, n).to(at::kFloat);
        const at::Tensor m = mf.narrow(0, off, n).to(at::kFloat).mul_(b1).add_(g, 1 - b1);
        const at::Tensor v = vf.narrow(0, off, n).to(at::kFloat).mul_(b2).addcmul_(g, g, 1 - b2);
        mf.narrow(0, off, n).copy_(m);
        vf.narrow(0, off, n).copy_(v);
        at::Tensor w = pf.narrow(0, off, n);
        at::Tensor wf = w.to(at::kFloat);
        if (o.weight_decay() > 0) wf.mul_(1 - o.lr() * o.weight_decay());  // decoupled, as torch's AdamW
        wf.sub_((m / c1).div_((v / c2).sqrt_().add_(o.eps())), o.lr());
        w.copy_(wf);
      }
      if (!contiguous) p.copy_(pf.view(p.sizes()));
    }
  }
  return loss;
}

void AdamWBf16::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<AdamWBf16ParamState, AdamWBf16Options>(archive, *this);
}

void AdamWBf16::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<AdamWBf16ParamState, AdamWBf16Options>(archive, *this);
}

}  // namespace edkm::optim
