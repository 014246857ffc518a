#pragma once
// DKM as a torch::nn module: holds the centroids across steps and clusters a weight in forward.
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <string>
#include <vector>

#include "edkm/dkm/dkm.h"
#include "edkm/dkm/palette.h"
#include "edkm/export.h"

namespace edkm {

/// Clusters a weight with DKM. In training mode forward returns the soft-clustered weight
/// (differentiable, centroids warm-started from the previous call and detached); in eval mode
/// the hard-assigned one. Before `milestone` steps, or for tensors with at most
/// `weight_threshold` elements, the weight passes through unchanged.
///
/// Example:
///   edkm::DKM dkm(edkm::DKMOptions(3).weight_threshold(0));
///   for (...) { auto w = dkm(linear->weight); auto y = at::linear(x, w, linear->bias); ...; dkm->step(); }
///   edkm::Palette p = dkm->finalize(linear->weight);
class EDKM_API DKMImpl : public torch::nn::Cloneable<DKMImpl> {
 public:
  explicit DKMImpl(DKMOptions options = {});
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// Clusters `weight`. The weight, centroids and scale are checked, and the engine chosen, when a
  /// weight of a new shape, dtype or device first arrives, not on every call (one host sync per
  /// check); kAuto falling back to the dense engine warns once, naming `name` and the reason.
  at::Tensor forward(const at::Tensor& weight);
  /// Advances the step counter (milestones count these). Throws, naming `name`, when a forward
  /// since the last step met NaN or Inf (see nonfinite()).
  void step();
  /// A device flag, true when a training forward since the last step() or clear_nonfinite() met a
  /// NaN or Inf weight or produced non-finite centroids; undefined before any. Such a forward keeps
  /// the previous centroids (so restoring good weights recovers the layer). Set without a host
  /// sync: step() reads it (the Palettizer reads all its layers' flags with one sync).
  const at::Tensor& nonfinite() const { return nonfinite_; }
  void clear_nonfinite() { nonfinite_ = at::Tensor(); }
  int64_t current_step() const { return step_host_; }
  void set_step(int64_t s);
  /// Reads the buffers (centroids, scale, step) of torch::save, in the file's dtype (one saved
  /// after to(bf16), or with fp64 centroids, loads into a fresh module); the step counter follows.
  void load(torch::serialize::InputArchive& archive) override;
  /// As Module::to, but a dtype changes the floating-point buffers only (the step counter stays
  /// int64, so the module still saves and loads).
  using torch::nn::Module::to;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  /// Whether forward clusters `weight` at the current step.
  bool active(const at::Tensor& weight) const;
  /// Hard assignment of `weight` to the current centroids (initialising them if needed).
  Palette finalize(const at::Tensor& weight);

  /// G x K x d centroids (empty before the first clustering).
  const at::Tensor& centroids() const { return centroids_; }
  /// Per-row scale (empty unless per_channel_scale).
  const at::Tensor& scale() const { return scale_; }
  /// Iterations and inertia of the last training forward.
  int64_t last_iterations() const { return last_iterations_; }
  double last_inertia() const { return last_inertia_; }

  DKMOptions options;
  /// Who this DKM clusters, for messages (the Palettizer sets the layer's path). Default "".
  std::string name;

 private:
  void ensure_initialised(const at::Tensor& weight);
  // The layout and engine of the last weight seen, checked once (see forward).
  struct Prepared {
    std::vector<int64_t> shape;
    at::ScalarType dtype = at::kFloat;
    c10::Device device = c10::kCPU;
    ClusterLayout layout;
    Engine engine = Engine::kDense;
  };
  const Prepared& prepare(const at::Tensor& weight);
  std::optional<Prepared> prepared_;
  at::Tensor nonfinite_;
  at::Tensor centroids_;
  at::Tensor scale_;
  at::Tensor step_;  // int64 scalar buffer: saved with the module; step_host_ mirrors it
  int64_t step_host_ = 0;
  int64_t last_iterations_ = 0;
  double last_inertia_ = 0;
};

TORCH_MODULE(DKM);

}  // namespace edkm
