// Activation checkpointing: a custom autograd function whose forward runs under no-grad and
// whose backward recomputes the callable (grad mode on, forward's RNG and autocast state) and
// differentiates the recomputed graph with respect to the inputs and parameters.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Generator.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <ostream>

#include "edkm/nn/activation_checkpoint.h"
#include "util/member_swap.h"
#if defined(EDKM_WITH_CUDA)
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace edkm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// RNG states of the CPU generator and of the CUDA generators of the devices used.
struct RngStates {
  at::Tensor cpu;
  std::vector<std::pair<c10::DeviceIndex, at::Tensor>> cuda;

  static RngStates capture(const std::vector<c10::DeviceIndex>& cuda_devices) {
    RngStates s;
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      s.cpu = gen.get_state();
    }
#if defined(EDKM_WITH_CUDA)
    for (auto d : cuda_devices) {
      auto gen = at::cuda::detail::getDefaultCUDAGenerator(d);
      std::lock_guard<std::mutex> lock(gen.mutex());
      s.cuda.emplace_back(d, gen.get_state());
    }
#endif
    return s;
  }

  void restore() const {
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(cpu);
    }
#if defined(EDKM_WITH_CUDA)
    for (const auto& [d, state] : cuda) {
      auto gen = at::cuda::detail::getDefaultCUDAGenerator(d);
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(state);
    }
#endif
  }
};

// Autocast state of the devices that matter here.
// The autocast cache keeps casts of leaf parameters; a cast made in the no-grad forward has no
// autograd history, and the recompute must cast afresh. Values do not depend on the cache, so it
// is off while the callable runs (forward and recompute) and restored after.
class AutocastCacheOff {
 public:
  AutocastCacheOff() : was_(at::autocast::is_autocast_cache_enabled()) {
    at::autocast::set_autocast_cache_enabled(false);
  }
  ~AutocastCacheOff() { at::autocast::set_autocast_cache_enabled(was_); }
  AutocastCacheOff(const AutocastCacheOff&) = delete;
  AutocastCacheOff& operator=(const AutocastCacheOff&) = delete;

 private:
  bool was_;
};

struct AutocastState {
  struct Device {
    c10::DeviceType type;
    bool enabled;
    at::ScalarType dtype;
  };
  std::vector<Device> devices;
  bool cache_enabled = true;

  static AutocastState capture() {
    AutocastState s;
    for (auto type : {c10::DeviceType::CPU, c10::DeviceType::CUDA})
      s.devices.push_back({type, at::autocast::is_autocast_enabled(type), at::autocast::get_autocast_dtype(type)});
    s.cache_enabled = at::autocast::is_autocast_cache_enabled();
    return s;
  }

  void restore() const {
    for (const auto& d : devices) {
      at::autocast::set_autocast_enabled(d.type, d.enabled);
      at::autocast::set_autocast_dtype(d.type, d.dtype);
    }
    at::autocast::set_autocast_cache_enabled(cache_enabled);
  }
};

// Everything the recompute needs that is not a tensor input.
struct CheckpointState : torch::CustomClassHolder {
  functional::TensorsFunction fn;
  size_t num_inputs = 0;
  CheckpointOptions options;
  std::vector<c10::DeviceIndex> cuda_devices;
  // Members that held another tensor than their Parameter at forward time (a Palettizer's
  // clustered weight). Named by a param: that tensor is the node's input in its place. Not named
  // (a frozen clustered layer, or a Parameter left out of params): kept here without a gradient
  // edge. Either way the recompute reads the tensor the forward read.
  detail::BoundMembers bound;
  RngStates rng;
  AutocastState autocast;
};

// Sets the forward's RNG and autocast state for the recompute; puts the current ones back after.
class RecomputeScope {
 public:
  explicit RecomputeScope(const CheckpointState& state) : state_(state) {
    if (state_.options.preserve_rng_state()) {
      current_rng_ = RngStates::capture(state_.cuda_devices);
      state_.rng.restore();
    }
    if (state_.options.preserve_autocast_state()) {
      current_autocast_ = AutocastState::capture();
      state_.autocast.restore();
    }
  }
  ~RecomputeScope() {
    if (state_.options.preserve_rng_state()) current_rng_.restore();
    if (state_.options.preserve_autocast_state()) current_autocast_.restore();
  }
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;

 private:
  const CheckpointState& state_;
  RngStates current_rng_;
  AutocastState current_autocast_;
};

struct CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
  static variable_list forward(AutogradContext* ctx, c10::intrusive_ptr<CheckpointState> state, at::TensorList inputs,
                               at::TensorList params) {
    std::vector<at::Tensor> in(inputs.begin(), inputs.end());
    if (state->options.preserve_rng_state()) state->rng = RngStates::capture(state->cuda_devices);
    if (state->options.preserve_autocast_state()) state->autocast = AutocastState::capture();
    variable_list outputs;
    {
      AutocastCacheOff cache_off;
      outputs = state->fn(in);
    }
    variable_list to_save(inputs.begin(), inputs.end());
    to_save.insert(to_save.end(), params.begin(), params.end());
    ctx->save_for_backward(std::move(to_save));
    ctx->saved_data["state"] = c10::IValue::make_capsule(std::move(state));
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto state = c10::static_intrusive_pointer_cast<CheckpointState>(ctx->saved_data["state"].toCapsule());
    const variable_list saved = ctx->get_saved_variables();
    const size_t n_in = state->num_inputs;

    std::vector<at::Tensor> inputs(n_in);
    variable_list targets;      // what gradients are computed for
    std::vector<size_t> where;  // their position among saved
    std::vector<at::Tensor> leaves(saved.size());
    auto is_bound = [&](size_t i) {
      return i >= n_in && std::any_of(state->bound.listed.begin(), state->bound.listed.end(),
                                      [&](const detail::MemberBinding& b) { return b.index + n_in == i; });
    };
    for (size_t i = 0; i < saved.size(); ++i) {
      at::Tensor t = saved[i];
      if ((i < n_in || is_bound(i)) && t.defined()) {
        const bool needs = t.requires_grad();
        t = t.detach();
        t.requires_grad_(needs);
        if (i < n_in) inputs[i] = t;
      }
      leaves[i] = t;
      if (t.defined() && t.requires_grad()) {
        targets.push_back(t);
        where.push_back(i);
      }
    }

    // Unlisted members: a frozen layer's clustered weight, detached. One that needs a gradient is a
    // zero stand-in and a target, only to find out whether the callable read it (then backward
    // throws: its gradient has no edge to flow into).
    const size_t n_targets = targets.size();
    std::vector<size_t> unlisted_targets;
    std::vector<at::Tensor> unlisted(state->bound.unlisted.size());
    for (size_t u = 0; u < unlisted.size(); ++u) {
      const auto& m = state->bound.unlisted[u];
      unlisted[u] = m.value.detach();
      if (m.needs_grad) {
        unlisted[u].requires_grad_(true);
        targets.push_back(unlisted[u]);
        unlisted_targets.push_back(u);
      }
    }

    variable_list outputs;
    {
      // The members read what the forward read, as fresh leaves, whatever they hold now.
      detail::MemberOverride members;
      for (const auto& b : state->bound.listed) members.set(b, leaves[n_in + b.index]);
      for (size_t u = 0; u < unlisted.size(); ++u) {
        const auto& m = state->bound.unlisted[u];
        members.set(detail::MemberBinding{0, m.module, m.member}, unlisted[u]);
      }
      RecomputeScope scope(*state);
      AutocastCacheOff cache_off;
      at::AutoGradMode grad_mode(true);
      outputs = state->fn(inputs);
    }
    TORCH_CHECK(outputs.size() == grads.size(), "edkm: checkpoint: the recompute returned ", outputs.size(),
                " outputs, the forward ", grads.size(), ": the callable must compute the same function each call");
    variable_list outs, gouts;
    for (size_t j = 0; j < outputs.size(); ++j)
      if (outputs[j].defined() && outputs[j].requires_grad() && grads[j].defined()) {
        outs.push_back(outputs[j]);
        gouts.push_back(grads[j]);
      }

    variable_list result(1 + saved.size());  // [state, inputs..., params...]
    if (outs.empty() || targets.empty()) return result;
    variable_list g = torch::autograd::grad(outs, targets, gouts, /*retain_graph=*/false, /*create_graph=*/false,
                                            /*allow_unused=*/true);
    for (size_t k = 0; k < where.size(); ++k) result[1 + where[k]] = g[k];
    for (size_t k = 0; k < unlisted_targets.size(); ++k)
      TORCH_CHECK(!g[n_targets + k].defined(), "edkm: checkpoint: the callable read the clustered weight of layer '",
                  state->bound.unlisted[unlisted_targets[k]].name,
                  "', which needs a gradient but is not among params, so its gradient would be lost: pass the "
                  "modules' parameters() (or that layer's weight) in params");
    return result;
  }
};

void collect_cuda_devices(const std::vector<at::Tensor>& ts, std::vector<c10::DeviceIndex>& out) {
  for (const auto& t : ts)
    if (t.defined() && t.is_cuda() && std::find(out.begin(), out.end(), t.get_device()) == out.end())
      out.push_back(t.get_device());
}

}  // namespace

namespace functional {

std::vector<at::Tensor> checkpoint_tensors(TensorsFunction fn, const std::vector<at::Tensor>& inputs,
                                           const std::vector<at::Tensor>& params, const CheckpointOptions& options) {
  TORCH_CHECK(fn, "edkm: checkpoint: the callable is empty");
  for (size_t i = 0; i < inputs.size(); ++i)
    TORCH_CHECK(inputs[i].defined(), "edkm: checkpoint: inputs[", i,
                "] is undefined (pass defined tensors; an optional one can be captured by the callable)");
  for (size_t i = 0; i < params.size(); ++i)
    TORCH_CHECK(params[i].defined(), "edkm: checkpoint: params[", i, "] is undefined");
  if (!at::GradMode::is_enabled()) return fn(inputs);
  auto state = c10::make_intrusive<CheckpointState>();
  state->fn = std::move(fn);
  state->num_inputs = inputs.size();
  state->options = options;
  std::vector<at::Tensor> edges = params;
  state->bound = detail::bind_members(edges);
  collect_cuda_devices(inputs, state->cuda_devices);
  collect_cuda_devices(edges, state->cuda_devices);
  return CheckpointFunction::apply(std::move(state), at::TensorList(inputs), at::TensorList(edges));
}

at::Tensor checkpoint_tensor(TensorFunction fn, const at::Tensor& input, const std::vector<at::Tensor>& params,
                             const CheckpointOptions& options) {
  TORCH_CHECK(fn, "edkm: checkpoint: the callable is empty");
  auto outs = checkpoint_tensors(
      [f = std::move(fn)](const std::vector<at::Tensor>& in) { return std::vector<at::Tensor>{f(in[0])}; }, {input},
      params, options);
  return outs[0];
}

}  // namespace functional

CheckpointImpl::CheckpointImpl(std::shared_ptr<torch::nn::Module> module, functional::TensorFunction forward,
                               Cloner cloner, CheckpointOptions options_)
    : options(options_), module_(std::move(module)), forward_(std::move(forward)), cloner_(std::move(cloner)) {
  TORCH_CHECK(module_ != nullptr, "edkm: Checkpoint: the wrapped module is empty");
  reset();
}

CheckpointImpl::CheckpointImpl(torch::nn::AnyModule module, CheckpointOptions options_)
    : CheckpointImpl(
          module.is_empty() ? nullptr : module.ptr(),
          [module](const at::Tensor& x) mutable { return module.forward<at::Tensor>(x); },
          [module, options_](const std::optional<torch::Device>& device) -> std::shared_ptr<torch::nn::Module> {
            return std::make_shared<CheckpointImpl>(module.clone(device), options_);
          },
          options_) {}

void CheckpointImpl::reset() { register_module("module", module_); }

void CheckpointImpl::pretty_print(std::ostream& stream) const {
  stream << "edkm::Checkpoint(preserve_rng_state=" << (options.preserve_rng_state() ? "true" : "false")
         << ", preserve_autocast_state=" << (options.preserve_autocast_state() ? "true" : "false") << ")";
}

std::shared_ptr<torch::nn::Module> CheckpointImpl::clone(const std::optional<torch::Device>& device) const {
  return cloner_(device);
}

at::Tensor CheckpointImpl::forward(const at::Tensor& x) {
  return functional::checkpoint(forward_, x, parameters(), options);
}

}  // namespace edkm
