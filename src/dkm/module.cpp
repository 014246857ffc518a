#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <ostream>

#include "edkm/dkm_module.h"

// Buffers are registered once in reset(); set_data swaps their contents (also device and dtype),
// as Module::to does, so state_dict and parameters stay consistent.

namespace edkm {

DKMImpl::DKMImpl(DKMOptions options_) : options(std::move(options_)) { reset(); }

void DKMImpl::reset() {
  options.validate();
  centroids_ = register_buffer("centroids", at::empty({0}));
  scale_ = register_buffer("scale", at::empty({0}));
}

void DKMImpl::pretty_print(std::ostream& stream) const {
  stream << "edkm::DKM(bits=" << options.bits() << ", tau=" << options.tau() << ", max_iter=" << options.max_iter()
         << ", granularity=" << to_string(options.granularity());
  if (options.granularity() == Granularity::kPerGroupedChannel) stream << ", group_size=" << options.group_size();
  if (options.cluster_dim() > 1) stream << ", cluster_dim=" << options.cluster_dim();
  stream << ", engine=" << to_string(options.engine()) << ")";
}

bool DKMImpl::active(const at::Tensor& weight) const {
  return step_ >= options.milestone() && weight.numel() > options.weight_threshold();
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
  auto out = functional::dkm_cluster(weight, centroids_, options, s);
  centroids_.set_data(out.centroids);
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
