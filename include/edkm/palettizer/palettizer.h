#pragma once
// Palettizer: DKM clustering of the layers of any torch::nn::Module inside the user's own loop.
//
// How the clustered weight reaches the forward (and the gradient the original weight).
// LibTorch's Linear / Embedding / Conv forward read their `weight` member. The module keeps that
// member and its registered Parameter as two handles of one tensor; the optimizer holds the
// Parameter (model->parameters()). A `Palettizer::Scope` (from `palettizer.clustered()`) sets,
// for each selected layer, the *member* to DKM(parameter) — a non-leaf tensor computed from the
// Parameter — and restores the member to the Parameter when it ends. The Parameter itself stays
// registered and untouched, so:
//   - the forward run inside the scope uses the clustered weight;
//   - backward (inside or after the scope) flows through DKM into Parameter.grad, exactly as if
//     the forward had called edkm::functional::dkm_cluster on it by hand (tested);
//   - activation checkpointing (edkm::Checkpoint, edkm::functional::checkpoint, checkpointed
//     LLaMA layers, nested) recomputes with the very tensors the forward read, also when
//     backward runs after the scope: the Palettizer registers each member with its Parameter
//     (src/nn/member_swap.h), the checkpoint binds what the member held at forward time and
//     points the member at it again for the recompute. Gradients are bitwise those of the
//     model without checkpointing (tested). A recompute of your own that reads module members
//     after the scope would see the raw weights: route it through edkm::functional::checkpoint
//     (it takes any callable), or call backward inside the scope;
//   - the optimizer, state_dict, torch::save and model->parameters() see the original weights.
// One scope = one DKM forward per layer (centroids move once), so open one per training step.
// Errors instead of wrong results: a layer removed from the model or whose `weight` was replaced
// since construction, a second Palettizer on the same layers, and `model->to()` or a replaced
// weight while a scope is open (reported by the next call into the Palettizer, as a destructor
// cannot throw) all raise c10::Error naming the layer; a scope always restores every member.
//
// Why a scope and not a parametrization computed inside each layer's forward: LibTorch's own
// modules read their `weight` member directly and have no forward pre-hooks, so a
// parametrization would mean replacing the user's layers by edkm types (breaking their typed
// holders, e.g. `torch::nn::Linear fc`). The scope works on any model as it is.
//
// State. The DKM state (per layer: centroids, per-channel scale, step counter; the Palettizer's
// step and finalized flag) are buffers of `state()`, a torch::nn::Module (edkm::PalettizerState)
// owned by the Palettizer: `torch::save(pal.state(), f)` / `torch::load(pal.state(), f)`,
// `state()->named_buffers()`, `state()->clone()` work; the centroids follow the weights'
// device on the next scope, so `model->to(device)` just works. It is not registered inside your
// model: an extra child would break your model's Cloneable::clone() and add tensors to its
// state_dict and Hugging Face exports.
//
// Example (the whole recipe; see examples/minimal_loop):
//   edkm::Palettizer pal(model, edkm::PalettizerOptions(edkm::DKMOptions(3))
//                                   .module_type("Embedding", edkm::DKMOptions(8))
//                                   .module_name("head", std::nullopt));   // leave the head alone
//   for (...) {
//     at::Tensor loss;
//     { auto clustered = pal.clustered(); loss = loss_fn(model->forward(x), y); }
//     optimizer.zero_grad(); loss.backward(); optimizer.step(); pal.step();
//   }
//   pal.finalize();                                  // weights become LUT entries
//   std::cout << pal.report().to_string();
//   pal.save_compressed("model.edkm.safetensors");   // LUT + bit-packed indices
//
// Resume: torch::save the model and the optimizer and pal.save_state(path) (= torch::save of
// pal.state(), written atomically) at step k; later build the same model, optimizer and
// Palettizer, torch::load the first two, pal.load_state(path) (checks that the layers and their
// options match), and continue: the results equal an uninterrupted run bitwise on CPU (tested).
#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "edkm/dkm/dkm.h"
#include "edkm/dkm/module.h"
#include "edkm/dkm/palette.h"
#include "edkm/export.h"
#include "edkm/io/checkpoint.h"

namespace edkm {

/// Which layers a Palettizer clusters and with which options, like coremltools'
/// DKMPalettizerConfig: a name pattern beats a module type, which beats the global options;
/// std::nullopt ("none") excludes. The most specific configuration is used as a whole (options
/// are not merged). A layer is clustered only when its weight has more elements than its
/// options' `weight_threshold` (the size threshold).
///
/// Example:
///   auto opts = edkm::PalettizerOptions(edkm::DKMOptions(3))             // Linear, Embedding, ...
///                   .module_type("Embedding", edkm::DKMOptions(8))
///                   .module_name(R"(layers\.0\..*)", edkm::DKMOptions(4))
///                   .module_name("lm_head", std::nullopt);                 // not clustered
struct EDKM_API PalettizerOptions {
  /// Global options DKMOptions() (4 bits).
  PalettizerOptions() : global_(DKMOptions()) {}
  /* implicit */ PalettizerOptions(DKMOptions global) : global_(std::move(global)) {}
  /// No global options: only the layers that type or name configurations select.
  /* implicit */ PalettizerOptions(std::nullopt_t) : global_(std::nullopt) {}

  /// Options of every layer of a supported type (Linear, Embedding, Conv1d, Conv2d) that no type
  /// or name configuration covers; std::nullopt: such layers are not clustered. Default DKMOptions().
  TORCH_ARG(std::optional<DKMOptions>, global);

 public:
  /// Options for every layer of `type`: "Linear", "Embedding", "Conv1d" or "Conv2d".
  PalettizerOptions& module_type(const std::string& type, std::optional<DKMOptions> options);
  /// Options for every layer whose module path (e.g. "layers.3.mlp.up") fully matches the
  /// ECMAScript regular expression `pattern`; the first matching pattern wins.
  PalettizerOptions& module_name(const std::string& pattern, std::optional<DKMOptions> options);

  /// The options of a layer at `path` of `type` ("Linear", ...); std::nullopt when excluded.
  std::optional<DKMOptions> resolve(const std::string& path, const std::string& type) const;
  /// The module_name patterns that match none of `paths` (a typo leaves its layers as they were:
  /// the Palettizer warns about each).
  std::vector<std::string> unmatched_patterns(const std::vector<std::string>& paths) const;

  /// The module types the Palettizer can cluster.
  static const std::vector<std::string>& supported_types();

 private:
  std::vector<std::pair<std::string, std::optional<DKMOptions>>> types_;
  std::vector<std::pair<std::string, std::optional<DKMOptions>>> names_;
};

/// One row of the report.
struct EDKM_API LayerReport {
  std::string name;            ///< module path
  std::vector<int64_t> shape;  ///< weight shape
  int64_t bits = 0;
  int64_t lut_size = 0;        ///< LUT entries: G * K * cluster_dim
  int64_t unique_values = -1;  ///< distinct values of the hard-assigned weight (-1: not initialised yet)
  std::string engine;          ///< engine computing the clustering
  int64_t dense_bytes = 0;     ///< the weight as it is
  int64_t packed_bytes = 0;    ///< bit-packed indices + LUT (+ scale) in the compressed format
};

/// Per-layer summary; `to_string()` prints it as a table.
struct EDKM_API PalettizerReport {
  std::vector<LayerReport> layers;
  std::string to_string() const;
};
EDKM_API std::ostream& operator<<(std::ostream& os, const PalettizerReport& r);

/// The DKM state of a Palettizer as a module: one edkm::DKM child per clustered layer (named by
/// the layer's path with '.' -> '_'; buffers centroids, scale, step) and the Palettizer's own
/// step and finalized flag as buffers. Saved with torch::save, which also records each layer's
/// path and options; torch::load refuses a file whose layers or options differ, naming them.
class EDKM_API PalettizerStateImpl : public torch::nn::Cloneable<PalettizerStateImpl> {
 public:
  /// (layer path, options) of every clustered layer, in module order.
  using Layers = std::vector<std::pair<std::string, DKMOptions>>;
  /// `layouts`, when given (one per layer, as the Palettizer passes them), let load() check the
  /// file's centroids and scales against the layers' weight shapes.
  explicit PalettizerStateImpl(Layers layers = {}, std::vector<ClusterLayout> layouts = {});
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  void save(torch::serialize::OutputArchive& archive) const override;
  /// Checks the file's layers and options against this state before anything is changed; the
  /// centroids and scales keep the file's dtype (a state saved after to(bf16) loads anywhere).
  void load(torch::serialize::InputArchive& archive) override;
  /// As Module::to, but a dtype changes the floating-point buffers only (step and finalized keep
  /// their int64 / bool type, so the state still saves and loads).
  using torch::nn::Module::to;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;

  const Layers& layers() const { return layers_; }
  /// The DKM module of layer i (module order).
  DKM dkm(size_t i) const { return dkms_.at(i); }
  int64_t step() const { return step_host_; }
  bool finalized() const { return finalized_host_; }
  /// Advances the Palettizer's and every layer's step counter.
  void advance();
  void set_finalized(bool f);
  /// Successful load() calls so far (what a Palettizer's cached palettes were derived before).
  int64_t loads() const { return loads_; }

 private:
  Layers layers_;
  std::vector<ClusterLayout> layouts_;
  int64_t loads_ = 0;
  std::vector<DKM> dkms_;
  at::Tensor step_, finalized_;  // int64 / bool scalar buffers, mirrored on the host
  int64_t step_host_ = 0;
  bool finalized_host_ = false;
};
TORCH_MODULE(PalettizerState);

/// Clusters the selected layers of a module with DKM during the user's training loop.
/// See the comment at the top of this header for how the forward and backward are wired.
class EDKM_API Palettizer {
 public:
  /// Selects the layers of `model` (walking its submodules) per `options`; checks every selected
  /// weight against its options now. Throws c10::Error naming the layer on a bad combination, or
  /// when a layer is clustered by another Palettizer already.
  Palettizer(std::shared_ptr<torch::nn::Module> model, PalettizerOptions options = {});
  template <class M>
  Palettizer(const torch::nn::ModuleHolder<M>& model, PalettizerOptions options = {})
      : Palettizer(std::static_pointer_cast<torch::nn::Module>(model.ptr()), std::move(options)) {}
  // Scopes point at their palettizer and the layers at the model's members: neither copied nor moved.
  Palettizer(const Palettizer&) = delete;
  Palettizer& operator=(const Palettizer&) = delete;
  ~Palettizer();

  /// RAII: while alive, each selected layer's `weight` member is its DKM output (soft-clustered
  /// when the model is in training mode, hard-assigned in eval mode — no gradient reaches the
  /// Parameter then —; the weight itself before the layer's milestone). Restores the members when
  /// destroyed. Not nestable.
  class EDKM_API Scope {
   public:
    Scope(Scope&& other) noexcept;
    Scope& operator=(Scope&&) = delete;
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    ~Scope();

   private:
    friend class Palettizer;
    explicit Scope(Palettizer* owner);
    void restore() noexcept;
    Palettizer* owner_ = nullptr;
    size_t swapped_ = 0;
  };

  /// Opens a scope for one forward (one DKM pass per layer). After finalize() it swaps nothing:
  /// the weights themselves are hard-assigned.
  [[nodiscard]] Scope clustered();

  /// Advances every layer's step counter (milestones count these). Call once per optimizer step.
  void step();
  int64_t current_step() const { return state_->step(); }

  /// Hard-assigns every selected weight to its nearest centroid and writes the result into the
  /// model's parameters (their values become LUT entries). Returns the palettes by tensor name
  /// ("<path>.weight").
  const std::map<std::string, Palette>& finalize();
  bool finalized() const { return state_->finalized(); }
  /// The palettes of the last finalize() (empty when a state was loaded since).
  const std::map<std::string, Palette>& palettes() const;

  /// The finalized model as a compressed checkpoint: palettes of the selected weights, every
  /// other parameter and buffer plainly. Requires finalize().
  CompressedCheckpoint compressed_checkpoint() const;
  /// save_compressed(path, compressed_checkpoint()).
  void save_compressed(const std::string& path) const;

  /// The DKM state as a module (see the top of this header).
  PalettizerState state() const { return state_; }
  /// torch::save(state(), path), written atomically (temporary file + rename).
  void save_state(const std::string& path) const;
  /// torch::load(state(), path): throws c10::Error, changing nothing, when the file is not a
  /// palettizer state or its layers or options differ from this palettizer's.
  void load_state(const std::string& path);

  /// One row per selected layer.
  PalettizerReport report() const;

  /// Module paths of the selected layers, in module order.
  std::vector<std::string> layer_names() const;
  /// The DKM module of a selected layer.
  DKM dkm(const std::string& layer) const;

 private:
  struct Layer {
    std::string path;
    std::string type;
    std::shared_ptr<torch::nn::Module> module;
    at::Tensor* member = nullptr;  // the `weight` member the forward reads
    at::Tensor parameter;          // the registered Parameter (what the optimizer updates)
    DKM dkm{nullptr};
    at::Tensor installed;  // what the scope put into the member
    c10::Device device = c10::kCPU;
    at::ScalarType dtype = at::kFloat;
  };
  const Layer& find(const std::string& layer) const;
  std::string tensor_name(const Layer& l) const;
  void check_layers() const;
  /// The palette finalize() made for `l`, or nullptr (none, or a state was loaded since).
  const Palette* cached_palette(const Layer& l) const;
  void throw_pending();

  std::shared_ptr<torch::nn::Module> model_;
  PalettizerOptions options_;
  std::vector<Layer> layers_;
  PalettizerState state_{nullptr};
  std::map<std::string, Palette> palettes_;
  int64_t palettes_loads_ = 0;  // state_->loads() when palettes_ were made: stale after a load
  bool scope_open_ = false;
  bool warned_training_after_finalize_ = false;
  std::string pending_error_;  // found when a scope closed; thrown by the next call
};

}  // namespace edkm
