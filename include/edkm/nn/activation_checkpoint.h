#pragma once
// Activation checkpointing of any module or callable: forward without keeping activations,
// recompute them in backward.
//
// Memory: a checkpointed segment keeps only its inputs (and its outputs, which the next segment
// uses anyway) instead of every intermediate; backward recomputes one segment at a time, so an
// L-layer stack checkpointed per layer holds about one layer's activations at the peak. Time: one
// extra forward per segment.
//
// Semantics. The forward runs under no-grad. The recompute runs inside backward with grad mode
// enabled (so saved-tensor hooks installed around backward see its saved tensors), with the CPU
// RNG state (and the CUDA RNG state of every CUDA device of the inputs and parameters) and the
// autocast state (CPU and CUDA: enabled, dtype, cache) restored to what they were at the forward:
// dropout draws the same masks, autocast picks the same dtypes. Gradients reach the inputs and
// `params` (the tensors the callable closes over that need gradients; the module forms pass
// the module's parameters, nested modules included) through the checkpoint node, so
// torch::autograd::grad works through it too. Once differentiable (no double backward).
//
// Under an edkm::Palettizer, a listed Parameter whose layer member reads a clustered weight at
// forward time (inside a clustered() scope) is replaced, as an input of the checkpoint node, by
// that clustered tensor (listing the clustered tensor itself, `layer->weight` read inside the
// scope, does the same), and the recompute points the member at it again: the recompute sees the
// forward's weights even when backward runs after the scope, and the gradient flows on through
// DKM into the Parameter once (see edkm/palettizer/palettizer.h). Every other layer clustered at
// forward time (a frozen one, not listed) is read in the recompute with its clustered weight too,
// without a gradient; one that needs a gradient but was left out of `params` makes backward
// throw, naming the layer, instead of losing its gradient.
#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#include "edkm/export.h"

namespace edkm {

/// Options of checkpointing.
struct EDKM_API CheckpointOptions {
  /// Restore the RNG states of the forward in the recompute. Default true.
  TORCH_ARG(bool, preserve_rng_state) = true;
  /// Restore the autocast state of the forward in the recompute. Default true.
  TORCH_ARG(bool, preserve_autocast_state) = true;
};

namespace detail {
// Callables the function forms take: not module holders (those take the module form), and
// convertible to F. Checked in that order, so that a holder's operator() (a deduced return type,
// not SFINAE-friendly) is never instantiated with the wrong arguments: checkpoint(linear, x) used
// not to compile.
template <typename C, typename F>
constexpr bool is_checkpoint_callable_v =
    std::conjunction_v<std::negation<std::is_base_of<torch::detail::ModuleHolderIndicator, std::decay_t<C>>>,
                       std::is_constructible<F, C>>;
}  // namespace detail

namespace functional {

/// A callable over tensors.
using TensorsFunction = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>;
/// A callable over one tensor.
using TensorFunction = std::function<at::Tensor(const at::Tensor&)>;

/// The non-template forms of checkpoint() below (what they call).
EDKM_API std::vector<at::Tensor> checkpoint_tensors(TensorsFunction fn, const std::vector<at::Tensor>& inputs,
                                                    const std::vector<at::Tensor>& params = {},
                                                    const CheckpointOptions& options = {});
EDKM_API at::Tensor checkpoint_tensor(TensorFunction fn, const at::Tensor& input,
                                      const std::vector<at::Tensor>& params = {},
                                      const CheckpointOptions& options = {});

/// Runs `fn(inputs)` checkpointed. `params`: tensors used by `fn` that are not among `inputs`
/// and need gradients (e.g. a module's parameters); those not listed get no gradient. `fn` must
/// stay callable until backward and compute the same function when called again. Without grad
/// mode, just calls `fn`. Every input must be defined.
///
/// Example:
///   auto outs = edkm::functional::checkpoint(
///       [&](const std::vector<at::Tensor>& in) { return std::vector<at::Tensor>{block->forward(in[0], in[1])}; },
///       {x, mask}, block->parameters());
template <typename Fn, std::enable_if_t<edkm::detail::is_checkpoint_callable_v<Fn, TensorsFunction>, int> = 0>
std::vector<at::Tensor> checkpoint(Fn&& fn, const std::vector<at::Tensor>& inputs,
                                   const std::vector<at::Tensor>& params = {}, const CheckpointOptions& options = {}) {
  return checkpoint_tensors(TensorsFunction(std::forward<Fn>(fn)), inputs, params, options);
}

/// One tensor in, one tensor out.
///
/// Example:
///   auto y = edkm::functional::checkpoint([mlp](const at::Tensor& t) { return mlp->forward(t); }, x,
///                                         mlp->parameters());
template <typename Fn, std::enable_if_t<edkm::detail::is_checkpoint_callable_v<Fn, TensorFunction>, int> = 0>
at::Tensor checkpoint(Fn&& fn, const at::Tensor& input, const std::vector<at::Tensor>& params = {},
                      const CheckpointOptions& options = {}) {
  return checkpoint_tensor(TensorFunction(std::forward<Fn>(fn)), input, params, options);
}

/// A module's `forward(Tensor)` checkpointed, with all its parameters (nested modules included).
///
/// Example:
///   torch::nn::Sequential block(torch::nn::Linear(512, 2048), torch::nn::GELU(), torch::nn::Linear(2048, 512));
///   auto y = edkm::functional::checkpoint(block, x);
template <typename ModuleType>
at::Tensor checkpoint(const torch::nn::ModuleHolder<ModuleType>& module, const at::Tensor& input,
                      const CheckpointOptions& options = {}) {
  auto held = module;  // shared: keeps the module alive until backward
  return checkpoint_tensor([held](const at::Tensor& t) mutable { return held->forward(t); }, input, held->parameters(),
                           options);
}

}  // namespace functional

/// Checkpoints a module with `forward(Tensor) -> Tensor`: a drop-in wrapper of a module holder
/// (torch::nn::Linear, torch::nn::Sequential, your own TORCH_MODULE) or an AnyModule.
///
/// Example:
///   torch::nn::Sequential stack;
///   for (int i = 0; i < 24; ++i) stack->push_back(edkm::Checkpoint(make_block()));  // make_block(): a Sequential
///   stack->forward(x).sum().backward();  // about one block's activations at the peak
class EDKM_API CheckpointImpl : public torch::nn::Cloneable<CheckpointImpl> {
 public:
  template <typename ModuleType>
  explicit CheckpointImpl(torch::nn::ModuleHolder<ModuleType> module, CheckpointOptions options = {})
      : CheckpointImpl(
            module.ptr(), [module](const at::Tensor& x) mutable -> at::Tensor { return module->forward(x); },
            [module, options](const std::optional<torch::Device>& device) -> std::shared_ptr<torch::nn::Module> {
              auto copy = std::dynamic_pointer_cast<ModuleType>(module->clone(device));
              return std::make_shared<CheckpointImpl>(torch::nn::ModuleHolder<ModuleType>(copy), options);
            },
            options) {}
  explicit CheckpointImpl(torch::nn::AnyModule module, CheckpointOptions options = {});

  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// Deep copy: clones the wrapped module.
  std::shared_ptr<torch::nn::Module> clone(const std::optional<torch::Device>& device = std::nullopt) const override;
  at::Tensor forward(const at::Tensor& x);

  /// The wrapped module.
  const std::shared_ptr<torch::nn::Module>& module() const { return module_; }

  CheckpointOptions options;

 private:
  using Cloner = std::function<std::shared_ptr<torch::nn::Module>(const std::optional<torch::Device>&)>;
  CheckpointImpl(std::shared_ptr<torch::nn::Module> module, functional::TensorFunction forward, Cloner cloner,
                 CheckpointOptions options);

  std::shared_ptr<torch::nn::Module> module_;
  functional::TensorFunction forward_;
  Cloner cloner_;
};
TORCH_MODULE(Checkpoint);

}  // namespace edkm
