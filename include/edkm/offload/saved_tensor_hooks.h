#pragma once
// Saved-tensor hooks in C++: every tensor that autograd saves for backward (built-in ops and
// custom autograd functions alike) passes through `pack` at save time and `unpack` when backward
// needs it. The C++ counterpart of Python's `torch.autograd.graph.saved_tensors_hooks`.
//
// Example (the identity hooks; see edkm/offload/offloader.h for a useful one):
//   struct Keep : edkm::SavedTensorHooks {
//     std::any pack(const at::Tensor& t) override { return t; }
//     at::Tensor unpack(const std::any& p) override { return std::any_cast<at::Tensor>(p); }
//   };
//   auto w = at::randn({8, 8}).requires_grad_();
//   {
//     edkm::SavedTensorHooksGuard guard(std::make_shared<Keep>());
//     auto loss = (w * w).sum();  // w is saved twice through Keep::pack
//     loss.backward();            // ... and restored through Keep::unpack
//   }
//
// How: edkm installs (once, on the first guard) a subclass of torch::autograd::Engine as the
// default engine, whose get_default_saved_variable_hooks() hands autograd a hook object bound to
// the innermost active guard of the calling thread. Everything else (backward itself) is the base
// engine's. Installing replaces any other default engine stub (e.g. PyTorch's Python engine):
// use it in C++ programs.
#include <ATen/core/Tensor.h>

#include <any>
#include <cstdint>
#include <memory>

#include "edkm/export.h"

namespace edkm {

/// Pack/unpack hooks for saved tensors. Subclass and push with SavedTensorHooksGuard.
///
/// Contract (as in PyTorch):
///  - `pack` runs in the forward thread, under no-grad, with the tensor autograd saves, detached
///    (same storage and version counter; keeping it cannot form a reference cycle with the graph);
///    it must not modify it in place. What it returns is kept by the graph until the graph frees its
///    saved variables (after a backward without retain_graph, or when the graph is destroyed).
///  - `unpack` may run on an autograd device thread (not the thread that packed: it must be
///    thread-safe), and more than once for the same value (retain_graph). It must return a tensor
///    with the sizes, dtype and device of the packed one (edkm checks and raises a c10::Error).
///  - Exceptions from either are reported as a c10::Error naming the hook; nothing crashes.
///  - The hooks object is kept alive (shared) by every value it packed.
class EDKM_API SavedTensorHooks {
 public:
  virtual ~SavedTensorHooks() = default;
  /// Called when autograd saves `tensor`; returns what unpack will get.
  virtual std::any pack(const at::Tensor& tensor) = 0;
  /// Called when backward needs the tensor; `packed` is what pack returned.
  virtual at::Tensor unpack(const std::any& packed) = 0;
};

/// RAII: tensors saved by autograd in this thread while the guard lives go through `hooks`.
/// Guards nest (the innermost wins; the outer one is back when the inner one ends) and must be
/// destroyed in reverse order of construction (as scopes are). A null `hooks` disables the outer
/// hooks for the scope. Thread-local: other threads are unaffected.
class EDKM_API SavedTensorHooksGuard {
 public:
  explicit SavedTensorHooksGuard(std::shared_ptr<SavedTensorHooks> hooks);
  ~SavedTensorHooksGuard();
  SavedTensorHooksGuard(const SavedTensorHooksGuard&) = delete;
  SavedTensorHooksGuard& operator=(const SavedTensorHooksGuard&) = delete;

 private:
  size_t depth_;
};

/// The hooks that a tensor saved now in this thread would go through (null: none).
EDKM_API std::shared_ptr<SavedTensorHooks> current_saved_tensor_hooks();

/// Number of saved values currently held by graphs through edkm hooks (all threads): packed and
/// not yet freed. Returns to its previous value once the graphs are freed.
EDKM_API int64_t live_saved_tensor_hook_values();

/// Installs edkm's autograd engine as the default engine (idempotent, thread-safe). The first
/// SavedTensorHooksGuard calls it; call it yourself to install it at start-up.
EDKM_API void install_saved_tensor_hooks_engine();

namespace detail {
/// What edkm's engine has started (for tests): the pool for deep re-entrant backwards, and one
/// ready queue per GPU (0 without one). Both exist once it has run a graph.
struct EngineThreads {
  bool reentrant_pool = false;
  int64_t device_queues = 0;
};
EDKM_API EngineThreads saved_tensor_hooks_engine_threads();
}  // namespace detail

}  // namespace edkm
