#pragma once
// The offloader (eDKM "marshaling"): saved-tensor hooks that move what autograd saves for
// backward out of device memory into host memory, and bring it back in backward.
//
//  - Saved tensors of at least `min_bytes` are copied to host buffers; smaller ones stay. The
//    whole storage of a saved view is copied (what the view would keep alive on the device).
//  - De-dup by storage: when a tensor whose storage is already offloaded is saved (a view,
//    a transpose, a slice, the same tensor saved twice), nothing is copied again; in backward it is
//    rebuilt with its sizes / strides / offset on the restored storage. One device copy per
//    storage per backward: the restored copy is kept from the first unpack of one of its views
//    until every live view has been unpacked (or freed), and shared by them.
//  - A storage written in place after it was copied is copied again (version counter check).
//  - CUDA: pinned host buffers, device-to-host copies on a side stream ordered by events.
//  - Host-to-host mode (`host_to_host(true)`): CPU tensors are "offloaded" into pool buffers too
//    (the saved reference to the original storage is dropped), so the whole path runs and is
//    tested on machines without a GPU.
//  - Host buffers come from a size-class pool owned by the offloader and are reused.
//
// Example:
//   auto off = std::make_shared<edkm::Offloader>(edkm::OffloadOptions().min_bytes(1 << 20));
//   {
//     edkm::SavedTensorHooksGuard guard(off);
//     auto out = edkm::functional::dkm_cluster(w, c, edkm::DKMOptions(3)).weight;
//     out.backward(grad);  // saved tensors are restored from host memory here
//   }
//   std::cout << off->stats().to_string() << "\n";
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/arg.h>

#include <any>
#include <cstdint>
#include <memory>
#include <string>

#include "edkm/export.h"
#include "edkm/saved_tensor_hooks.h"

namespace edkm {

struct EDKM_API OffloadOptions {
  /// Saved tensors smaller than this (numel x element size) are kept as they are. Default 1 MiB.
  TORCH_ARG(int64_t, min_bytes) = int64_t{1} << 20;
  /// Offload CPU tensors into host pool buffers too (CPU-only machines, tests). Default false:
  /// CPU tensors are kept as they are.
  TORCH_ARG(bool, host_to_host) = false;
  /// Reuse an already offloaded storage for its views. Default true.
  TORCH_ARG(bool, dedup) = true;
  /// CUDA: host buffers are pinned (page-locked) memory. Default true.
  TORCH_ARG(bool, pin_memory) = true;
  /// CUDA: copy to host on a side stream (ordered with events) instead of the current stream.
  TORCH_ARG(bool, async) = true;
  /// Free host buffers the pool keeps for reuse, at most. Default 4 GiB.
  TORCH_ARG(int64_t, pool_max_cached_bytes) = int64_t{4} << 30;

  // TORCH_ARG leaves the access at private:
 public:
  /// Throws c10::Error naming the first invalid option.
  void validate() const;
};

/// What an offloader did since it was made (or since reset_stats()). Bytes are storage bytes.
struct EDKM_API OffloadStats {
  int64_t tensors_packed = 0;     ///< saved tensors seen by pack
  int64_t tensors_offloaded = 0;  ///< of those, stored in host memory (copied or de-duplicated)
  int64_t tensors_unpacked = 0;   ///< unpack calls (retain_graph counts each backward)
  int64_t storages_copied = 0;    ///< storages copied to host
  int64_t bytes_offloaded = 0;    ///< bytes copied to host (device -> host traffic)
  int64_t copies_avoided = 0;     ///< saved tensors whose storage was already on the host (de-dup)
  int64_t bytes_not_copied = 0;   ///< their storage bytes, not copied again
  int64_t bytes_restored = 0;     ///< bytes copied back (host -> device traffic)
  int64_t restores_shared = 0;    ///< unpacks served by a device copy already restored for a view
  int64_t host_bytes = 0;         ///< host buffer bytes held now by saved tensors
  int64_t host_bytes_peak = 0;    ///< highest host_bytes
  int64_t pool_hits = 0;          ///< host buffers reused from the pool
  int64_t pool_misses = 0;        ///< host buffers newly allocated
  int64_t pool_cached_bytes = 0;  ///< free host buffer bytes kept by the pool now
  std::string to_string() const;
};

/// Saved-tensor hooks that offload to host memory. Push it with SavedTensorHooksGuard (it must be
/// held by a shared_ptr). Thread-safe; the values it packed keep it alive.
class EDKM_API Offloader : public SavedTensorHooks {
 public:
  explicit Offloader(OffloadOptions options = {});
  ~Offloader() override;
  Offloader(const Offloader&) = delete;
  Offloader& operator=(const Offloader&) = delete;

  std::any pack(const at::Tensor& tensor) override;
  at::Tensor unpack(const std::any& packed) override;

  const OffloadOptions& options() const { return options_; }
  OffloadStats stats() const;
  /// Zeroes the counters (host_bytes, host_bytes_peak and pool_cached_bytes stay current).
  void reset_stats();
  /// Frees the host buffers the pool keeps for reuse.
  void empty_pool();

  struct State;

 private:
  OffloadOptions options_;
  std::shared_ptr<State> state_;
};

/// RAII: an Offloader pushed as the saved-tensor hooks of this thread for the scope.
///   edkm::OffloadGuard off(edkm::OffloadOptions().host_to_host(true));
///   loss = model(x); loss.backward();
///   off.stats();
class EDKM_API OffloadGuard {
 public:
  explicit OffloadGuard(OffloadOptions options = {});
  explicit OffloadGuard(std::shared_ptr<Offloader> offloader);
  const std::shared_ptr<Offloader>& offloader() const { return offloader_; }
  OffloadStats stats() const { return offloader_->stats(); }

 private:
  std::shared_ptr<Offloader> offloader_;
  SavedTensorHooksGuard guard_;
};

}  // namespace edkm
