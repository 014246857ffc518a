#include <c10/util/Exception.h>

#include <cmath>

#include "edkm/dkm/dkm.h"

namespace edkm {

std::string to_string(Granularity g) { return g == Granularity::kPerTensor ? "per_tensor" : "per_grouped_channel"; }
std::string to_string(ScaleScheme s) { return s == ScaleScheme::kMinMax ? "min_max" : "abs"; }
std::string to_string(KMeansInit i) {
  switch (i) {
    case KMeansInit::kAuto:
      return "auto";
    case KMeansInit::kKMeansPlusPlus:
      return "kmeans++";
    case KMeansInit::kOptimal1D:
      return "opt1d";
  }
  return "?";
}
std::string to_string(Engine e) {
  switch (e) {
    case Engine::kDense:
      return "dense";
    case Engine::kTable:
      return "table";
    case Engine::kStreaming:
      return "streaming";
    case Engine::kAuto:
      return "auto";
  }
  return "?";
}

Engine engine_from_string(const std::string& name) {
  for (Engine e : {Engine::kDense, Engine::kTable, Engine::kStreaming, Engine::kAuto})
    if (to_string(e) == name) return e;
  TORCH_CHECK(false, "edkm: unknown engine '", name, "' (dense, table, streaming, auto)");
}

void DKMOptions::validate() const {
  TORCH_CHECK(bits_ >= 1 && bits_ <= 8, "DKMOptions: bits must be in 1..8, got ", bits_);
  TORCH_CHECK(std::isfinite(tau_) && tau_ > 0, "DKMOptions: tau must be a positive finite number, got ", tau_);
  TORCH_CHECK(max_iter_ >= 1, "DKMOptions: max_iter must be >= 1, got ", max_iter_);
  TORCH_CHECK(std::isfinite(epsilon_) && epsilon_ >= 0, "DKMOptions: epsilon must be >= 0, got ", epsilon_);
  TORCH_CHECK(std::isfinite(zero_threshold_) && zero_threshold_ >= 0 && zero_threshold_ < 1,
              "DKMOptions: zero_threshold must be in [0, 1), got ", zero_threshold_);
  TORCH_CHECK(std::isfinite(prune_threshold_) && prune_threshold_ >= 0,
              "DKMOptions: prune_threshold must be >= 0, got ", prune_threshold_);
  TORCH_CHECK(cluster_dim_ >= 1, "DKMOptions: cluster_dim must be >= 1, got ", cluster_dim_);
  TORCH_CHECK(cluster_dim_ == 1 || engine_ != Engine::kTable,
              "DKMOptions: cluster_dim > 1 (vector clustering) needs the dense or streaming engine, got engine ",
              to_string(engine_));
  if (granularity_ == Granularity::kPerGroupedChannel) {
    TORCH_CHECK(group_size_ >= 1, "DKMOptions: per_grouped_channel granularity needs group_size >= 1, got ",
                group_size_);
  }
  TORCH_CHECK(group_size_ >= 0, "DKMOptions: group_size must be >= 0, got ", group_size_);
  TORCH_CHECK(milestone_ >= 0, "DKMOptions: milestone must be >= 0, got ", milestone_);
  TORCH_CHECK(weight_threshold_ >= 0, "DKMOptions: weight_threshold must be >= 0, got ", weight_threshold_);
  TORCH_CHECK(opt1d_max_unique_ >= 1, "DKMOptions: opt1d_max_unique must be >= 1, got ", opt1d_max_unique_);
  TORCH_CHECK(init_max_iter_ >= 0, "DKMOptions: init_max_iter must be >= 0, got ", init_max_iter_);
  TORCH_CHECK(init_ != KMeansInit::kOptimal1D || cluster_dim_ == 1,
              "DKMOptions: the exact 1-D init (opt1d) needs cluster_dim == 1, got ", cluster_dim_);
}

}  // namespace edkm
