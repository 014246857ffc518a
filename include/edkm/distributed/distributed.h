#pragma once
// Data-parallel DKM across learners on PyTorch's own distributed engine, c10d (DESIGN.md §4).
//
//  - `edkm::Communicator`: rank, world size, in-place sum all-reduce, all-gather, broadcast,
//    barrier. `dist::init_from_env()` builds one on c10d from the standard environment of
//    `torchrun --no-python` (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK): a TCPStore
//    rendezvous, ProcessGroupGloo for CPU tensors, ProcessGroupNCCL for CUDA tensors (when edkm
//    was built with NCCL). `dist::world_of_one()` is the single-process communicator.
//  - Sharded clustering (`dist::dkm_cluster_sharded`): every rank holds a row block of the weight;
//    the LUT is the one of the whole weight. Table engine: the 65,536-bin counts are all-reduced
//    in forward, the gradient table G in backward. Streaming engine: each rank streams its rows
//    and the K-vector sums (numerator, denominator, inertia) are all-reduced every iteration, and
//    so are the backward reductions. Early stopping is decided after the all-reduce, identically
//    on every rank. Values, centroids and gradients equal the single-process run.
//  - `dist::ShardedOffloader`: eDKM's sharding for the dense engine. Every rank computes the same
//    dense DKM on the whole weight; of every tensor autograd saves, a rank keeps only its 1/world
//    block of the storage bytes, and backward all-gathers the blocks (bitwise the same tensor).
//    With `uniquify(true)` (eDKM combined) a storage of repeated rows keeps its distinct rows on
//    every rank and this rank's block of the 16-bit index list.
//  - `dist::all_reduce_gradients`: the gradient average of a DDP-style loop.
//  - A rank that dies or never joins: every other rank gets a c10::Error naming the timeout,
//    never a hang.
//
// c10d headers stay out of this header (compile time, ABI): the c10d communicator is made in
// src/distributed/communicator.cpp.
//
// Example (run with `torchrun --standalone --no-python --nproc-per-node 4 ./train`):
//   auto comm = edkm::dist::init_from_env();
//   auto block = edkm::dist::row_block(weight.size(0), *comm, opts.cluster_dim());  // this rank's rows
//   auto w = weight.narrow(0, block.begin, block.rows).clone().requires_grad_();
//   auto c = edkm::dist::init_centroids_sharded(w, opts, *comm);     // the same on every rank
//   auto out = edkm::dist::dkm_cluster_sharded(w, c, opts, comm);    // rows of W_soft
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <any>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "edkm/dkm/dkm.h"
#include "edkm/export.h"
#include "edkm/offload/saved_store_stats.h"
#include "edkm/offload/saved_tensor_hooks.h"

namespace edkm {

/// Collectives over a fixed group of ranks. Every rank must call the same collectives in the same
/// order with tensors of the same shape and dtype. Implementations throw c10::Error on failure
/// (timeouts included) and never hang past their timeout.
class EDKM_API Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  /// "gloo", "gloo+nccl", "single", ...
  virtual std::string backend() const = 0;
  /// Sums `tensor` (contiguous) over the ranks, in place.
  virtual void all_reduce_sum(at::Tensor& tensor) = 0;
  /// The `tensor` of every rank (same shape everywhere) concatenated along dim 0 in rank order:
  /// world_size x size(0) rows. A 0-dim tensor is treated as 1 element.
  virtual at::Tensor all_gather(const at::Tensor& tensor) = 0;
  /// Copies `tensor` of rank `root` into `tensor` of every rank, in place (contiguous).
  virtual void broadcast(at::Tensor& tensor, int64_t root) = 0;
  /// Returns when every rank has called it.
  virtual void barrier() = 0;
};

namespace dist {

/// The launch environment, as torchrun sets it.
struct EDKM_API LaunchEnv {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  std::string master_addr;  ///< empty for a world of one
  int64_t master_port = 0;  ///< 0 for a world of one
  /// Reads RANK, WORLD_SIZE (required), LOCAL_RANK (default RANK), MASTER_ADDR, MASTER_PORT
  /// (required when WORLD_SIZE > 1). Throws c10::Error naming a missing or malformed variable.
  static LaunchEnv from_environment();
};

/// The device a rank computes on: cuda:LOCAL_RANK when the machine has `cuda_devices` > 0 CUDA
/// devices (torchrun's one-process-per-GPU convention), else the CPU. Throws c10::Error naming
/// LOCAL_RANK when it is not below cuda_devices.
EDKM_API at::Device local_device(const LaunchEnv& env, int64_t cuda_devices);
/// local_device of this process: LaunchEnv::from_environment() (rank 0 of 1 when RANK is unset)
/// and the CUDA devices this process sees.
EDKM_API at::Device local_device();

/// Options of init_from_env.
struct EDKM_API DistOptions {
  /// Seconds to wait for a rendezvous or a collective before failing. Default 60.
  TORCH_ARG(double, timeout_s) = 60;
  /// Without RANK and WORLD_SIZE in the environment, return world_of_one() instead of throwing.
  /// Default false.
  TORCH_ARG(bool, allow_world_of_one) = false;
  /// NCCL collectives wait on the host, so that a timeout raises c10::Error from the collective
  /// (sets TORCH_NCCL_BLOCKING_WAIT=1 unless the environment already sets it). false keeps
  /// PyTorch's default: the NCCL watchdog tears the process down on a timeout. Default true.
  TORCH_ARG(bool, nccl_blocking_wait) = true;

 public:
  /// Throws c10::Error naming the first invalid option.
  void validate() const;
};

/// A communicator of the standard environment (LaunchEnv::from_environment): TCPStore
/// rendezvous at MASTER_ADDR:MASTER_PORT (under torchrun, the agent's store), Gloo for CPU
/// tensors, NCCL for CUDA tensors (made on first use, bound to local_device()). When the process
/// sees a CUDA device for its LOCAL_RANK, cuda:LOCAL_RANK becomes the current CUDA device: put the
/// rank's tensors on local_device() (a CUDA tensor elsewhere is refused, naming both devices).
/// The NCCL group is shut down when the communicator is destroyed. WORLD_SIZE=1 gives
/// world_of_one(). Throws c10::Error after `timeout_s` when a rank never joins.
EDKM_API std::shared_ptr<Communicator> init_from_env(const DistOptions& options = {});

/// The single-process communicator: rank 0 of 1, every collective is the identity.
EDKM_API std::shared_ptr<Communicator> world_of_one();

/// Rows [begin, begin + rows) of a weight with `total_rows` rows that a rank holds: equal blocks
/// of ceil(total / world) rows, the last ones shorter (possibly empty). `multiple` > 1 aligns the
/// block size to it (grouped LUTs: whole groups per rank).
struct RowBlock {
  int64_t begin = 0;
  int64_t rows = 0;
};
EDKM_API RowBlock row_block(int64_t total_rows, const Communicator& comm, int64_t multiple = 1);

/// The row blocks of every rank (row_block of each) concatenated along dim 0: the whole tensor,
/// on every rank. Blocks may differ in rows (not in the other dims).
EDKM_API at::Tensor all_gather_rows(const at::Tensor& block, Communicator& comm);

/// Initial centroids of the whole weight from this rank's row block (equal on every rank): the
/// blocks are all-gathered and functional::init_centroids runs on the whole weight. `scale`:
/// the rows x 1 per-channel scale of this block (per_channel_scale).
EDKM_API at::Tensor init_centroids_sharded(const at::Tensor& block, const DKMOptions& options, Communicator& comm,
                                           const at::Tensor& scale = {});

/// One differentiable DKM pass over a row block `block` of a weight sharded by rows across the
/// ranks of `comm`, with one LUT for the whole weight (per-tensor granularity): `weight` of the
/// result is the block's rows of W_soft, `centroids` / `iterations` / `inertia` those of the whole
/// weight (equal on every rank). Engine kTable or kStreaming (kAuto picks one; kDense is refused:
/// use ShardedOffloader). Every rank must call it (and run its backward) in the same order. The
/// backward all-reduces too: call backward on every rank.
EDKM_API DKMOutput dkm_cluster_sharded(const at::Tensor& block, const at::Tensor& centroids, const DKMOptions& options,
                                       const std::shared_ptr<Communicator>& comm, const at::Tensor& scale = {});

/// DDP-style use of a replicated weight: this rank clusters its row block of `weight` with
/// dkm_cluster_sharded and the blocks of W_soft are all-gathered into the whole clustered weight
/// (differentiable). Backward sums the upstream gradient over the ranks for this rank's rows, so
/// `weight.grad()` holds d(sum of all ranks' losses)/dw in this rank's rows and 0 elsewhere:
/// all_reduce_gradients (average) then gives every rank d(mean loss)/dw, as DDP does.
EDKM_API DKMOutput dkm_cluster_replicated(const at::Tensor& weight, const at::Tensor& centroids,
                                          const DKMOptions& options, const std::shared_ptr<Communicator>& comm,
                                          const at::Tensor& scale = {});

/// Options of all_reduce_gradients.
struct EDKM_API GradientReduceOptions {
  /// Gradients are flattened into buckets of at most this many bytes (one all-reduce each). Default 25 MiB.
  TORCH_ARG(int64_t, bucket_bytes) = int64_t{25} << 20;
  /// Divide by the world size (DDP's average) rather than sum. Default true.
  TORCH_ARG(bool, average) = true;
};

/// All-reduces the gradients of `params` (those with a defined grad; undefined ones are skipped,
/// identically on every rank is the caller's duty), bucketed by dtype and device.
EDKM_API void all_reduce_gradients(const std::vector<at::Tensor>& params, Communicator& comm,
                                   const GradientReduceOptions& options = {});

/// Options of ShardedOffloader.
struct EDKM_API ShardedOffloadOptions {
  /// Saved tensors smaller than this (numel x element size) are kept as they are. Default 1 MiB.
  TORCH_ARG(int64_t, min_bytes) = int64_t{1} << 20;
  /// Keep the blocks in host memory (an edkm::HostMemoryPool) rather than on the tensor's device.
  /// Default true.
  TORCH_ARG(bool, to_host) = true;
  /// Host pool buffers are pinned (CUDA). Default true.
  TORCH_ARG(bool, pin_memory) = true;
  /// eDKM combined (uniquification + sharding): a saved storage whose rows repeat (the N x K maps
  /// of dense DKM on bf16/fp16 weights; the test of OffloadOptions::uniquify) keeps its U distinct
  /// rows whole on every rank and only this rank's 1/world block of the 16-bit index list (the
  /// index list split across the ranks); storages with the same row structure share one list (the
  /// fit is checked on every rank's block and agreed with a 1-element all-reduce). Unpack
  /// all-gathers the index blocks and expands the rows, bitwise. Storages that do not uniquify
  /// are sharded as usual. Default false.
  TORCH_ARG(bool, uniquify) = false;

 public:
  void validate() const;
};

/// What a ShardedOffloader did: the figures of the saved-tensor store it is built on
/// (tensors_kept: kept as blocks; kept_bytes: this rank's blocks, tables and index blocks now;
/// bytes_stored: what pack copied into them; restores / bytes_restored: the all-gathers and the
/// bytes they returned to this rank; storage_bytes_kept: the whole storages' bytes).
using ShardedOffloadStats = SavedStoreStats;

/// eDKM's sharding of saved tensors for a computation that every rank runs identically (the dense
/// DKM of a replicated weight): pack keeps this rank's 1/world block of the bytes of each saved
/// storage (de-duplicated by storage, views rebuilt with as_strided), unpack all-gathers the
/// blocks. Results are bitwise those of the unsharded run. The saved tensors must be equal on
/// every rank and packed / unpacked in the same order (the same graph): use it around the
/// clustering, not around a forward over rank-local data. Unpack runs a collective: call backward
/// on every rank.
///
/// Example:
///   auto off = std::make_shared<edkm::dist::ShardedOffloader>(comm);
///   {
///     edkm::SavedTensorHooksGuard guard(off);
///     auto opts = edkm::DKMOptions(3).engine(edkm::Engine::kDense);  // eDKM: the dense engine
///     auto out = edkm::functional::dkm_cluster(w, c, opts).weight;    // every rank
///     out.backward(grad);
///   }
class EDKM_API ShardedOffloader : public SavedTensorHooks {
 public:
  explicit ShardedOffloader(std::shared_ptr<Communicator> comm, ShardedOffloadOptions options = {});
  ~ShardedOffloader() override;
  std::any pack(const at::Tensor& tensor) override;
  at::Tensor unpack(const std::any& packed) override;
  ShardedOffloadStats stats() const;
  /// Host pool bytes reserved now (the blocks kept on the host, plus cached free buffers).
  int64_t host_pool_reserved_bytes() const;
  int64_t host_pool_peak_reserved_bytes() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace dist
}  // namespace edkm
