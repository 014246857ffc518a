// C++ saved-tensor hooks: an autograd Engine subclass whose get_default_saved_variable_hooks()
// forwards to the innermost edkm hooks of the calling thread.
#include "edkm/offload/saved_tensor_hooks.h"

#include <ATen/SavedTensorHooks.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/input_buffer.h>
#include <torch/csrc/autograd/saved_variable_hooks.h>

#include <atomic>
#include <exception>
#include <mutex>
#include <sstream>
#include <vector>

namespace edkm {
namespace {

thread_local std::vector<std::shared_ptr<SavedTensorHooks>> tls_stack;
std::atomic<int64_t> live_values{0};

std::string describe(const at::Tensor& t) {
  std::ostringstream s;
  s << t.scalar_type() << t.sizes() << " on " << t.device();
  return s.str();
}

// One saved value: the hooks captured at pack time (unpack may run on another thread, where the
// thread-local stack is empty or different) and what they packed. Freed with the graph's
// SavedVariable.
class ForwardingHooks final : public torch::autograd::SavedVariableHooks {
 public:
  explicit ForwardingHooks(std::shared_ptr<SavedTensorHooks> hooks) : hooks_(std::move(hooks)) {}
  ~ForwardingHooks() override {
    if (packed_) live_values.fetch_sub(1, std::memory_order_relaxed);
  }

  void call_pack_hook(const at::Tensor& tensor) override {
    sizes_ = tensor.sizes().vec();
    dtype_ = tensor.scalar_type();
    device_ = tensor.device();
    try {
      // Detached (same storage and version counter, no autograd metadata): a saved output refers to
      // the node that saves it, and a hook keeping it would make a cycle that is never freed.
      value_ = hooks_->pack(tensor.detach());
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "edkm saved-tensor pack hook failed on a ", describe(tensor), ": ", e.what());
    } catch (...) {
      TORCH_CHECK(false, "edkm saved-tensor pack hook failed on a ", describe(tensor),
                  ": it threw something that is not a std::exception");
    }
    packed_ = true;
    live_values.fetch_add(1, std::memory_order_relaxed);
  }

  at::Tensor call_unpack_hook() override {
    TORCH_CHECK(packed_, "edkm saved-tensor unpack hook called on a value that was never packed");
    at::Tensor out;
    try {
      out = hooks_->unpack(value_);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "edkm saved-tensor unpack hook failed (saved tensor ", dtype_, sizes_, " on ", device_,
                  "): ", e.what());
    } catch (...) {
      TORCH_CHECK(false, "edkm saved-tensor unpack hook failed (saved tensor ", dtype_, sizes_, " on ", device_,
                  "): it threw something that is not a std::exception");
    }
    TORCH_CHECK(out.defined(), "edkm saved-tensor unpack hook returned an undefined tensor for a saved ", dtype_,
                sizes_, " on ", device_);
    TORCH_CHECK(out.sizes() == at::IntArrayRef(sizes_) && out.scalar_type() == dtype_ && out.device() == device_,
                "edkm saved-tensor unpack hook returned a ", describe(out), " for a saved ", dtype_, sizes_, " on ",
                device_, " (sizes, dtype and device must match)");
    return out;
  }

 private:
  std::shared_ptr<SavedTensorHooks> hooks_;
  std::any value_;
  std::vector<int64_t> sizes_;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_{at::kCPU};
  bool packed_ = false;
};

// The engine that replaces LibTorch's default one. Its device threads: LibTorch starts an
// engine's device threads (one per GPU, and the pool for deep re-entrant backwards) under ONE
// process-wide once-flag, so when a backward already ran on the base engine, this second engine
// would have no device queue at all and every CUDA backward through it would hit the engine's
// "device_ready_queues_.size()" internal assert (found on the first GPU run: every offloaded CUDA
// backward failed). So it starts its own, once, before its first graph.
struct HooksEngine final : torch::autograd::Engine {
  std::unique_ptr<torch::autograd::SavedVariableHooks> get_default_saved_variable_hooks() override {
    if (tls_stack.empty() || !tls_stack.back()) return nullptr;
    return std::make_unique<ForwardingHooks>(tls_stack.back());
  }
  c10::intrusive_ptr<at::ivalue::Future> execute_with_graph_task(
      const std::shared_ptr<torch::autograd::GraphTask>& graph_task, std::shared_ptr<torch::autograd::Node> graph_root,
      torch::autograd::InputBuffer&& input_buffer) override {
    start_own_device_threads();
    return Engine::execute_with_graph_task(graph_task, std::move(graph_root), std::move(input_buffer));
  }
  void start_own_device_threads() {
    std::call_once(own_threads_, [this] {
      initialize_device_threads_pool();                  // the process-wide once: may start them here
      if (!thread_pool_shared_) start_device_threads();  // it had started another engine's
    });
  }
  detail::EngineThreads threads() const {
    return {thread_pool_shared_ != nullptr, static_cast<int64_t>(device_ready_queues_.size())};
  }
  // Never destroyed (like PyTorch's Python engine): worker threads may outlive static destructors.
  ~HooksEngine() override { stop(); }

 private:
  std::once_flag own_threads_;
};

HooksEngine& hooks_engine() {
  static auto* engine = new HooksEngine();
  return *engine;
}

torch::autograd::Engine& hooks_engine_base() { return hooks_engine(); }

}  // namespace

void install_saved_tensor_hooks_engine() {
  static std::once_flag once;
  std::call_once(once, [] {
    hooks_engine();
    torch::autograd::set_default_engine_stub(&hooks_engine_base);
  });
}

SavedTensorHooksGuard::SavedTensorHooksGuard(std::shared_ptr<SavedTensorHooks> hooks) {
  install_saved_tensor_hooks_engine();
  TORCH_CHECK(at::SavedTensorDefaultHooks::is_enabled(), "saved-tensor hooks are disabled in this thread: ",
              at::SavedTensorDefaultHooks::get_disabled_error_message().value_or(""));
  tls_stack.push_back(std::move(hooks));
  depth_ = tls_stack.size();
}

SavedTensorHooksGuard::~SavedTensorHooksGuard() {
  // Scopes end in reverse order; a guard destroyed out of order drops everything above it too.
  if (tls_stack.size() >= depth_) tls_stack.resize(depth_ - 1);
}

std::shared_ptr<SavedTensorHooks> current_saved_tensor_hooks() {
  return tls_stack.empty() ? nullptr : tls_stack.back();
}

int64_t live_saved_tensor_hook_values() { return live_values.load(std::memory_order_relaxed); }

namespace detail {
EngineThreads saved_tensor_hooks_engine_threads() { return hooks_engine().threads(); }
}  // namespace detail

}  // namespace edkm
