#include <ATen/ATen.h>
#include <ATen/Parallel.h>
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

// The stochastic rounding's randomness: the top 16 bits of murmur3's 32-bit finalizer of (seed,
// element index), in uint32 arithmetic in the CPU loop (which the compiler vectorises) and in int64
// tensor ops elsewhere, where a product mod 2^32 is taken in 16-bit halves so that nothing
// overflows: both give the same bits on any device.
uint32_t seed32(uint64_t seed) {  // splitmix64, folded to 32 bits
  uint64_t z = seed + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}

constexpr uint32_t kMixHi = 0x9E3779B9u, kMix1 = 0x85EBCA6Bu, kMix2 = 0xC2B2AE35u;

inline uint32_t noise16(int64_t i, uint32_t s) {
  uint32_t x = static_cast<uint32_t>(i) ^ s ^ (static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32) * kMixHi);
  x ^= x >> 16;
  x *= kMix1;
  x ^= x >> 13;
  x *= kMix2;
  x ^= x >> 16;
  return x >> 16;
}

// a * c mod 2^32 for int64 tensors a in [0, 2^32): (a_lo c + ((a_hi c) mod 2^16) 2^16) mod 2^32.
at::Tensor mul_mod32(const at::Tensor& a, uint32_t c) {
  const int64_t k = c, m32 = 0xFFFFFFFFll;
  const at::Tensor hi = (a.bitwise_right_shift(16) * k).bitwise_and(0xFFFF).bitwise_left_shift(16);
  return (a.bitwise_and(0xFFFF) * k + hi).bitwise_and(m32);
}

// noise16 in tensor ops (i: int64 indices, >= 0).
at::Tensor noise16(const at::Tensor& i, uint32_t s) {
  const int64_t m32 = 0xFFFFFFFFll;
  at::Tensor x = i.bitwise_and(m32)
                     .bitwise_xor(static_cast<int64_t>(s))
                     .bitwise_xor(mul_mod32(i.bitwise_right_shift(32).bitwise_and(m32), kMixHi));
  x = x.bitwise_xor(x.bitwise_right_shift(16));
  x = mul_mod32(x, kMix1);
  x = x.bitwise_xor(x.bitwise_right_shift(13));
  x = mul_mod32(x, kMix2);
  x = x.bitwise_xor(x.bitwise_right_shift(16));
  return x.bitwise_right_shift(16);
}

void check_options(const AdamWBf16Options& o) {
  TORCH_CHECK(o.lr() >= 0, "edkm::optim::AdamWBf16: lr must be >= 0, got ", o.lr());
  TORCH_CHECK(o.eps() >= 0, "edkm::optim::AdamWBf16: eps must be >= 0, got ", o.eps());
  const auto [b1, b2] = o.betas();
  TORCH_CHECK(0 <= b1 && b1 < 1, "edkm::optim::AdamWBf16: betas[0] must be in [0, 1), got ", b1);
  TORCH_CHECK(0 <= b2 && b2 < 1, "edkm::optim::AdamWBf16: betas[1] must be in [0, 1), got ", b2);
  TORCH_CHECK(o.weight_decay() >= 0, "edkm::optim::AdamWBf16: weight_decay must be >= 0, got ", o.weight_decay());
}

// x (fp32, checked by the caller) rounded stochastically into `out` (bf16, x's shape): the loop writes a contiguous CPU
// `out` in place (no temporary: the optimizer's moments are rounded straight into their state).
void round_into(const at::Tensor& x, uint64_t seed, int64_t offset, const at::Tensor& out) {
  const uint32_t s = seed32(seed);
  const int64_t n = x.numel();
  if (x.is_cpu() && x.is_contiguous() && out.is_contiguous()) {
    const auto* in = reinterpret_cast<const uint32_t*>(x.data_ptr<float>());
    auto* dst = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
    at::parallel_for(0, n, int64_t{1} << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        // finite: adding < 2^16 to the magnitude bits cannot carry past the sign (at most to inf);
        // inf and NaN: truncated, a NaN keeping its quiet bit set (so that it stays a NaN)
        const uint32_t bits = in[i], up = (bits + noise16(offset + i, s)) >> 16;
        const uint32_t special = (bits >> 16) | ((bits & 0x007FFFFFu) != 0 ? 0x40u : 0u);
        dst[i] = static_cast<uint16_t>((bits & 0x7F800000u) != 0x7F800000u ? up : special);
      }
    });
    return;
  }
  const at::Tensor xc = x.contiguous();
  const at::Tensor bits = xc.view(at::kInt).to(at::kLong).bitwise_and(0xFFFFFFFFll);
  const at::Tensor idx = at::arange(offset, offset + n, x.options().dtype(at::kLong)).view(x.sizes());
  const at::Tensor up = (bits + noise16(idx, s)).bitwise_right_shift(16);
  const at::Tensor special =
      bits.bitwise_right_shift(16).bitwise_or(at::where(bits.bitwise_and(0x007FFFFF) != 0, 0x40, 0));
  at::Tensor r = at::where(at::isfinite(xc), up, special);
  r = at::where(r >= 32768, r - 65536, r);  // the 16 bits as int16
  out.copy_(r.to(at::kShort).view(at::kBFloat16));
}
}  // namespace

at::Tensor to_bf16_stochastic(const at::Tensor& x, uint64_t seed, int64_t offset) {
  TORCH_CHECK(x.defined() && x.scalar_type() == at::kFloat, "edkm::optim::to_bf16_stochastic: x must be fp32, got ",
              x.defined() ? c10::toString(x.scalar_type()) : "an undefined tensor");
  TORCH_CHECK(offset >= 0, "edkm::optim::to_bf16_stochastic: offset must be >= 0, got ", offset);
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  round_into(x, seed, offset, out);
  return out;
}

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
  for (size_t gi = 0; gi < param_groups_.size(); ++gi) {
    auto& group = param_groups_[gi];
    const auto& o = static_cast<const AdamWBf16Options&>(group.options());
    check_options(o);
    const auto [b1, b2] = o.betas();
    for (size_t pi = 0; pi < group.params().size(); ++pi) {
      auto& p = group.params()[pi];
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
      // The rounding's seeds: this step, this parameter's place, which tensor (a resumed run draws the same).
      const auto seed = [&](uint64_t which) {
        return static_cast<uint64_t>(st.step()) * 0x9E3779B97F4A7C15ull ^ gi * 0xC2B2AE3D27D4EB4Full ^
               pi * 0x165667B19E3779F9ull ^ which * 0x27D4EB2F165667C5ull;
      };
      for (int64_t off = 0; off < pf.numel(); off += kChunk) {
        const int64_t n = std::min(kChunk, pf.numel() - off);
        const at::Tensor g = gf.narrow(0, off, n).to(at::kFloat);
        const at::Tensor m = mf.narrow(0, off, n).to(at::kFloat).mul_(b1).add_(g, 1 - b1);
        const at::Tensor v = vf.narrow(0, off, n).to(at::kFloat).mul_(b2).addcmul_(g, g, 1 - b2);
        round_into(m, seed(0), off, mf.narrow(0, off, n));
        round_into(v, seed(1), off, vf.narrow(0, off, n));
        at::Tensor w = pf.narrow(0, off, n);
        at::Tensor wf = w.to(at::kFloat);
        if (o.weight_decay() > 0) wf.mul_(1 - o.lr() * o.weight_decay());  // decoupled, as torch's AdamW
        // x * float(1 / c), not x / c: ATen's CUDA division by a scalar multiplies by its reciprocal,
        // the CPU divides; this way both devices compute the same bits.
        wf.sub_(m.mul(1.0 / c1).div_(v.mul(1.0 / c2).sqrt_().add_(o.eps())), o.lr());
        if (w.scalar_type() == at::kBFloat16) {
          round_into(wf, seed(2), off, w);
        } else {
          w.copy_(wf);
        }
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
