#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/where.h>
#include <c10/util/Exception.h>
#include <torch/serialize/input-archive.h>

#include <ostream>

#include "dkm/internal.h"
#include "edkm/dkm/module.h"
#include "util/module_state.h"

// Buffers are registered once in reset(); set_data swaps their contents (also device and dtype),
// as Module::to does, so state_dict and parameters stay consistent.

namespace edkm {

DKMImpl::DKMImpl(DKMOptions options_) : options(std::move(options_)) { reset(); }

void DKMImpl::reset() {
  options.validate();
  centroids_ = register_buffer("centroids", at::empty({0}));
  scale_ = register_buffer("scale", at::empty({0}));
  step_ = register_buffer("step", at::full({}, step_host_, at::TensorOptions().dtype(at::kLong)));
  prepared_.reset();
}

void DKMImpl::step() {
  if (nonfinite_.defined()) {
    const bool bad = nonfinite_.item<bool>();
    nonfinite_ = at::Tensor();
    TORCH_CHECK(!bad, "edkm: DKM", name.empty() ? "" : " of layer '" + name + "'", " met NaN or Inf at step ",
                step_host_,
                ": its weight has non-finite values (the centroids were not updated; restore the weight, "
                "e.g. from a checkpoint, or lower the learning rate)");
  }
  set_step(step_host_ + 1);
}

void DKMImpl::set_step(int64_t s) {
  TORCH_CHECK(s >= 0, "edkm: DKM::set_step: the step must be >= 0, got ", s);
  step_host_ = s;
  at::NoGradGuard no_grad;
  step_.fill_(s);  // on the buffer's device; no host sync
}

void DKMImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  detail::to_keeping_state(*this, device, dtype, non_blocking);
  prepared_.reset();
}

void DKMImpl::to(torch::Dtype dtype, bool non_blocking) {
  detail::to_keeping_state(*this, std::nullopt, dtype, non_blocking);
  prepared_.reset();
}

void DKMImpl::load(torch::serialize::InputArchive& archive) {
  detail::load_adopting_dtypes(*this, archive);
  TORCH_CHECK(step_.numel() == 1 && !at::isFloatingType(step_.scalar_type()), "edkm: DKM: the saved step counter of '",
              name, "' is not an integer scalar");
  step_host_ = step_.item<int64_t>();
  prepared_.reset();
}

const DKMImpl::Prepared& DKMImpl::prepare(const at::Tensor& weight) {
  if (prepared_ && prepared_->dtype == weight.scalar_type() && prepared_->device == weight.device() &&
      weight.sizes().equals(prepared_->shape))
    return *prepared_;
  const at::Tensor s = options.per_channel_scale() ? scale_ : at::Tensor();
  Prepared p;
  p.shape = weight.sizes().vec();
  p.dtype = weight.scalar_type();
  p.device = weight.device();
  p.layout = detail::check_inputs(weight, centroids_, options, s);
  std::string fallback;
  p.engine = detail::resolve_engine(weight, p.layout, options, &fallback);
  if (!fallback.empty()) {
    TORCH_WARN("edkm: DKM", name.empty() ? "" : " of layer '" + name + "'",
               ": the auto engine falls back to the dense engine (memory O(T * N * K)) because ", fallback);
  }
  prepared_ = std::move(p);
  return *prepared_;
}

void DKMImpl::pretty_print(std::ostream& stream) const {
  stream << "edkm::DKM(bits=" << options.bits() << ", tau=" << options.tau() << ", max_iter=" << options.max_iter()
         << ", granularity=" << to_string(options.granularity());
  if (options.granularity() == Granularity::kPerGroupedChannel) stream << ", group_size=" << options.group_size();
  if (options.cluster_dim() > 1) stream << ", cluster_dim=" << options.cluster_dim();
  stream << ", engine=" << to_string(options.engine()) << ")";
}

bool DKMImpl::active(const at::Tensor& weight) const {
  return step_host_ >= options.milestone() && weight.numel() > options.weight_threshold();
}

void DKMImpl::ensure_initialised(const at::Tensor& weight) {
  if (options.per_channel_scale() && scale_.numel() == 0) {
    scale_.set_data(functional::channel_scale(weight, options.scale_scheme()).to(weight.device()));
  }
  const at::Tensor s = options.per_channel_scale() ? scale_ : at::Tensor();
  if (centroids_.numel() == 0) {
    centroids_.set_data(functional::init_centroids(weight, options, s));
  } else if (centroids_.device() != weight.device()) {
    centroids_.set_data(centroids_.to(weight.device()));
    if (scale_.numel()) scale_.set_data(scale_.to(weight.device()));
  }
}

at::Tensor DKMImpl::forward(const at::Tensor& weight) {
  if (!active(weight)) return weight;
  ensure_initialised(weight);
  const at::Tensor s = options.per_channel_scale() ? scale_ : at::Tensor();
  if (!is_training()) return finalize(weight).decompress().to(weight.device());
  const Prepared& p = prepare(weight);
  auto out = detail::cluster(weight, centroids_, options, s, p.layout, p.engine);
  // A NaN or Inf weight would leave NaN centroids for good (and the table engine, which leaves
  // non-finite values out of its table, would hide it). Kept instead: the previous centroids,
  // and a flag for step(). The weight's sum is non-finite iff a weight is: summed in fp32 for
  // 16-bit weights (an fp16 sum overflows past 65504, e.g. 45M weights of mean 0.0015), in the
  // weight's dtype otherwise (out of reach for real weights); no N-sized temporary, no host sync.
  const at::Tensor c = out.centroids.to(detail::compute_dtype(weight));
  const bool half = weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16;
  const at::Tensor total = half ? weight.detach().sum(at::kFloat) : weight.detach().sum();
  const at::Tensor bad = at::isfinite(total).logical_and(at::isfinite(c).all()).logical_not();
  centroids_.set_data(at::where(bad, centroids_, c));
  nonfinite_ = nonfinite_.defined() ? nonfinite_.logical_or(bad) : bad;
  last_iterations_ = out.iterations;
  last_inertia_ = out.inertia;
  return out.weight;
}

Palette DKMImpl::finalize(const at::Tensor& weight) {
  ensure_initialised(weight);
  const at::Tensor s = options.per_channel_scale() ? scale_ : at::Tensor();
  return Palette::from_centroids(weight, centroids_, options, s);
}

}  // namespace edkm
