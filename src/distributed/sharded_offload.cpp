// ShardedOffloader: eDKM's sharding of saved tensors. Every rank runs the same computation; of each
// saved storage a rank keeps only its 1/world block of bytes (host pool or device), and unpack
// all-gathers the blocks into the whole storage, on which the saved view is rebuilt. The store
// (offload/saved_store.h) does the rest as for the Offloader: de-dup by storage, one gather per
// storage per backward, uniquify (distinct rows kept whole on every rank, this rank's block of the
// 16-bit index list; a fit to a kept list agreed by all ranks).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "edkm/distributed/distributed.h"
#include "edkm/memory/host_pool.h"
#include "offload/saved_store.h"

namespace edkm::dist {

void ShardedOffloadOptions::validate() const {
  TORCH_CHECK(min_bytes_ >= 0, "edkm: ShardedOffloadOptions::min_bytes must be >= 0, got ", min_bytes_);
}

namespace {

using edkm::detail::Block;
using edkm::detail::Part;
using edkm::detail::pool_block;

/// Keeps this rank's block of a storage or of an index list's labels (whole units: bytes, or
/// 2-byte labels), zero-padded to the block size; distinct-row tables whole. Restoring all-gathers.
class ShardPlacement : public edkm::detail::Placement {
 public:
  ShardPlacement(std::shared_ptr<Communicator> comm, std::shared_ptr<HostMemoryPool> pool, bool to_host)
      : comm_(std::move(comm)), pool_(std::move(pool)), to_host_(to_host) {}

  bool accepts(const at::Tensor& t) const override { return t.is_cpu() || t.is_cuda(); }

  Block keep(const at::Tensor& bytes, Part part) override {
    const int64_t n = bytes.numel(), unit = part == Part::kLabels ? 2 : 1;
    const int64_t chunk = part == Part::kTable ? n : unit * ceil_div(n / unit, comm_->world_size());
    const int64_t begin = part == Part::kTable ? 0 : std::min(n, comm_->rank() * chunk);
    const int64_t mine = std::min(n, begin + chunk) - begin;
    Block b = to_host_ ? pool_block(*pool_, chunk) : Block();
    if (!to_host_) b.bytes = at::empty({chunk}, at::TensorOptions().dtype(at::kByte).device(bytes.device()));
    b.accounted = chunk;  // the block, not its pool size class
    if (mine > 0) b.bytes.narrow(0, 0, mine).copy_(bytes.narrow(0, begin, mine));
    if (mine < chunk) b.bytes.narrow(0, mine, chunk - mine).zero_();
    return b;
  }

  at::Tensor restore(Block& b, Part part, const at::Device& device, int64_t& moved) override {
    if (part == Part::kTable) return b.bytes.to(device);
    // Every rank reaches this gather for the same storage in the same order (the same graph).
    auto whole = comm_->all_gather(b.bytes.to(device));
    moved += whole.numel();
    return whole;
  }

  std::pair<at::Tensor, int64_t> held_labels(Block& labels, int64_t rows, const at::Device& device) override {
    const int64_t chunk_rows = labels.bytes.numel() / 2;
    const int64_t begin = std::min(rows, comm_->rank() * chunk_rows), mine = std::min(rows, begin + chunk_rows) - begin;
    return {labels.bytes.view(at::kShort).narrow(0, 0, mine).to(device), begin};
  }

  bool all_agree(bool fits) override {
    auto agreed = at::full({1}, fits ? 1 : 0, at::kLong);
    comm_->all_reduce_sum(agreed);
    return agreed.item<int64_t>() == comm_->world_size();
  }

 private:
  static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
  std::shared_ptr<Communicator> comm_;
  std::shared_ptr<HostMemoryPool> pool_;
  bool to_host_;
};

}  // namespace

struct ShardedOffloader::State {
  std::shared_ptr<HostMemoryPool> pool;
  std::shared_ptr<edkm::detail::SavedStore> store;
};

ShardedOffloader::ShardedOffloader(std::shared_ptr<Communicator> comm, ShardedOffloadOptions options) {
  TORCH_CHECK(comm != nullptr, "edkm: ShardedOffloader needs a communicator (dist::init_from_env())");
  options.validate();
  state_ = std::make_shared<State>();
  state_->pool = std::make_shared<HostMemoryPool>(HostMemoryPoolOptions().pinned(options.pin_memory()));
  edkm::detail::SavedStoreOptions so;
  so.min_bytes = options.min_bytes();
  so.uniquify = options.uniquify();
  so.reuse_live_restore = false;  // a restore is a collective: only the store's rounds decide it
  state_->store = std::make_shared<edkm::detail::SavedStore>(
      std::make_unique<ShardPlacement>(std::move(comm), state_->pool, options.to_host()), so);
}

ShardedOffloader::~ShardedOffloader() = default;

std::any ShardedOffloader::pack(const at::Tensor& tensor) { return state_->store->pack(tensor); }

at::Tensor ShardedOffloader::unpack(const std::any& value) { return state_->store->unpack(value, "ShardedOffloader"); }

ShardedOffloadStats ShardedOffloader::stats() const {
  auto s = state_->store->counters.snapshot();
  s.pool = state_->pool->stats();
  s.pool_cached_bytes = s.pool.cached_bytes;
  return s;
}

int64_t ShardedOffloader::host_pool_reserved_bytes() const { return state_->pool->stats().reserved_bytes; }
int64_t ShardedOffloader::host_pool_peak_reserved_bytes() const { return state_->pool->stats().peak_reserved_bytes; }

}  // namespace edkm::dist
