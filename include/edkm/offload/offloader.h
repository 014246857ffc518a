#pragma once
// The offloader (eDKM "marshaling"): saved-tensor hooks that move what autograd saves for
// backward out of device memory into host memory, and bring it back in backward. It is the
// saved-tensor store it shares with dist::ShardedOffloader (src/offload/saved_store.h: de-dup,
// restore rounds, uniquify, SavedStoreStats) with a host placement and a prefetcher.
//
//  - Saved tensors of at least `min_bytes` are copied to host buffers; smaller ones stay. The
//    whole storage of a saved view is copied (what the view would keep alive on the device).
//  - De-dup by storage: when a tensor whose storage is already offloaded is saved (a view,
//    a transpose, a slice, the same tensor saved twice), nothing is copied again; in backward it is
//    rebuilt with its sizes / strides / offset on the restored storage. One device copy per
//    storage per backward: the restored copy is kept from the first unpack of one of its views
//    until every live view has been unpacked (or freed), and shared by them.
//  - A storage written in place after it was copied is copied again (version counter check).
//  - Host buffers come from an edkm::HostMemoryPool (pinned when a GPU is present): one the
//    offloader owns (built from `pin_memory` and `pool_max_cached_bytes`), or yours through
//    `pool(...)`, which several offloaders may share. The pool's own statistics are in `stats().pool`.
//  - CUDA: device-to-host copies on a side stream ordered by events.
//  - Prefetch in backward (`prefetch(n)`, default 1): when a storage is restored, the next `n`
//    storages backward is expected to need are restored ahead of time (on CUDA: host-to-device
//    copies on a side stream; the consumer's stream waits on an event). The guess is reverse pack
//    order, and follows pack order instead when unpacks arrive that way. Prefetched copies not
//    consumed are freed when their storage is freed or when newer prefetches need the room
//    (counted as `prefetch_wasted`). Still one device copy per storage.
//  - Uniquify (`uniquify(true)`, eDKM's "uniquification"): a saved storage whose rows (the
//    innermost dimension of its layout) repeat, as in the N x K maps of DKM on 16-bit weights
//    (every row is a function of one weight value, and a bf16/fp16 weight has at most 65,536 of
//    them), is stored as its U distinct rows plus a 16-bit index per row. Storages with the same
//    row structure share one index list. Restored bitwise identical. See OffloadOptions::uniquify.
//    In dense DKM it catches every N x K map (the distances' input of square, the softmax output,
//    the clamp's input: 9 storages in a 3-iteration step), not the N-element ones (the weight in
//    fp32, A @ C), whose one "row" is the whole weight. It lowers host memory and traffic, not the
//    device peak (that is forward's temporaries and backward's working set).
//  - Host-to-host mode (`host_to_host(true)`): CPU tensors are "offloaded" into pool buffers too
//    (the saved reference to the original storage is dropped), so the whole path runs and is
//    tested on machines without a GPU. Measuring it: HostMemoryPool allocates with aligned_alloc
//    (cudaHostAlloc with a GPU), not through LibTorch's CPU allocator, so edkm::MemoryMeter's
//    `cpu` figure does not count pool bytes. In this mode the `cpu` figure therefore plays the
//    part of device memory (what stays saved, the restored copies, the uniquify work) and the pool
//    (`stats().pool`, `kept_bytes`) the part of host memory: a drop of the `cpu` peak on CPU is the
//    drop the offloader gives a GPU's peak (benchmarks/offload_memory.cpp reports both).
//
// Example:
//   auto off = std::make_shared<edkm::Offloader>(edkm::OffloadOptions().min_bytes(1 << 20).uniquify(true));
//   {
//     edkm::SavedTensorHooksGuard guard(off);
//     auto opts = edkm::DKMOptions(3).engine(edkm::Engine::kDense);  // its N x K maps are what is saved
//     auto out = edkm::functional::dkm_cluster(w, c, opts).weight;
//     out.backward(grad);  // saved tensors are restored (and prefetched) from host memory here
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
#include "edkm/memory/host_pool.h"
#include "edkm/offload/saved_store_stats.h"
#include "edkm/offload/saved_tensor_hooks.h"

namespace edkm {

struct EDKM_API OffloadOptions {
  /// Saved tensors smaller than this (numel x element size) are kept as they are. Default 1 MiB.
  TORCH_ARG(int64_t, min_bytes) = int64_t{1} << 20;
  /// Offload CPU tensors into host pool buffers too (CPU-only machines, tests). Default false:
  /// CPU tensors are kept as they are.
  TORCH_ARG(bool, host_to_host) = false;
  /// Reuse an already offloaded storage for its views. Default true.
  TORCH_ARG(bool, dedup) = true;
  /// Host buffers are pinned (page-locked) memory when a GPU is present: the owned pool's
  /// HostMemoryPoolOptions::pinned (ignored with `pool`). Default true.
  TORCH_ARG(bool, pin_memory) = true;
  /// CUDA: copies to host and prefetches on a side stream (ordered with events) instead of the
  /// current stream. Default true.
  TORCH_ARG(bool, async) = true;
  /// Free host buffers the owned pool keeps for reuse, at most (HostMemoryPoolOptions::
  /// max_cached_bytes: 0 = no limit; ignored with `pool`). Default 4 GiB.
  TORCH_ARG(int64_t, pool_max_cached_bytes) = int64_t{4} << 30;
  /// The host memory pool to take buffers from; null: the offloader makes and owns one. Share
  /// one pool between offloaders to reuse buffers across them. Default null.
  TORCH_ARG(std::shared_ptr<HostMemoryPool>, pool) = nullptr;
  /// Storages restored ahead of time in backward, at most, beyond the one being unpacked
  /// (0: no prefetch). Default 1.
  TORCH_ARG(int64_t, prefetch) = 1;
  /// Bytes of prefetched, not yet consumed device copies, at most (0: no byte bound). Default 0.
  TORCH_ARG(int64_t, prefetch_max_bytes) = 0;
  /// Store repeated rows once: a saved storage of >= min_bytes that a saved tensor of >= 2
  /// dimensions covers densely is split into rows along its innermost dimension; when they have
  /// U <= 65,536 distinct bit patterns and U rows + a 16-bit index per row take at most half the
  /// bytes, the U rows and the index are stored instead (rows are found by a 64-bit hash per row
  /// and verified bitwise; a hash collision, too many distinct rows or too small a saving keep the
  /// plain copy). A storage whose rows fit an index list already held (every row equal, bit for
  /// bit, to the row of its label's first occurrence) reuses that list without hashing: all the
  /// N x K maps of one weight share one list, as in eDKM. Unpack = index_select of the U rows.
  /// Catches the N x K maps of dense DKM on bf16/fp16 weights (distances, attention: 16x less
  /// for K = 8 fp32); on fp32 weights (millions of distinct values) it finds nothing and costs a
  /// hash pass over a sample of rows per storage. Default false.
  TORCH_ARG(bool, uniquify) = false;

  // TORCH_ARG leaves the access at private:
 public:
  /// Throws c10::Error naming the first invalid option.
  void validate() const;
};

/// What an offloader did since it was made (or since reset_stats()): the figures of the
/// saved-tensor store it is built on (kept_bytes: host buffer bytes; bytes_stored: device -> host
/// traffic; bytes_restored: host -> device traffic).
using OffloadStats = SavedStoreStats;

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
  /// Zeroes the counters (kept_bytes and pool_cached_bytes stay current; kept_bytes_peak starts from kept_bytes).
  void reset_stats();
  /// Frees the host buffers the pool keeps for reuse (of a shared pool: everybody's).
  void empty_pool();
  /// The host memory pool the buffers come from.
  const std::shared_ptr<HostMemoryPool>& pool() const;

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
