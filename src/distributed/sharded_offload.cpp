// ShardedOffloader: eDKM's sharding of saved tensors. Every rank runs the same computation; of each
// saved storage a rank keeps only its 1/world block of bytes (host pool or device), and unpack
// all-gathers the blocks into the whole storage, on which the saved view is rebuilt (as_strided
// semantics via set_). De-dup by storage and one gather per storage per backward, as the offloader.
// With uniquify, a storage of repeated rows keeps its distinct rows whole and this rank's block of
// the 16-bit index list (offload/unique_rows.h, the offloader's uniquify).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <sstream>

#include "edkm/distributed.h"
#include "edkm/host_pool.h"
#include "memory/peak.h"
#include "offload/storage_registry.h"
#include "offload/unique_rows.h"
#include "util/format.h"

namespace edkm::dist {

void ShardedOffloadOptions::validate() const {
  TORCH_CHECK(min_bytes_ >= 0, "edkm: ShardedOffloadOptions::min_bytes must be >= 0, got ", min_bytes_);
}

std::string ShardedOffloadStats::to_string() const {
  using edkm::detail::mib;
  std::ostringstream os;
  os << "packed " << tensors_packed << " (sharded " << tensors_sharded << ", de-dup " << copies_avoided << "); "
     << storages_sharded << " storages of " << mib(bytes_sharded) << " kept as blocks of " << mib(block_bytes)
     << " now (peak " << mib(block_bytes_peak) << "); " << gathers << " all-gathers of " << mib(bytes_gathered) << ", "
     << restores_shared << " restores shared";
  if (tensors_uniquified > 0)
    os << "; uniquified " << tensors_uniquified << " of " << mib(uniquify_bytes_before) << " (" << index_lists_shared
       << " sharing an index list)";
  return os.str();
}

namespace detail {

struct ShardedOffloadState : std::enable_shared_from_this<ShardedOffloadState> {
  ShardedOffloadState(std::shared_ptr<Communicator> c, ShardedOffloadOptions o)
      : comm(std::move(c)), options(std::move(o)), pool(HostMemoryPoolOptions().pinned(options.pin_memory())) {}
  std::shared_ptr<Communicator> comm;
  ShardedOffloadOptions options;
  HostMemoryPool pool;
  std::atomic<int64_t> tensors_packed{0}, tensors_sharded{0}, storages_sharded{0}, copies_avoided{0}, bytes_sharded{0},
      block_bytes{0}, block_bytes_peak{0}, bytes_stored{0}, gathers{0}, bytes_gathered{0}, restores_shared{0},
      tensors_uniquified{0}, uniquify_bytes_before{0}, index_lists_shared{0};
  std::mutex mu;  // guards by_storage, index_lists

  void add_block_bytes(int64_t b) {
    bytes_stored.fetch_add(b);
    edkm::detail::add_to_current(block_bytes, block_bytes_peak, b);
  }

  // Bytes kept by this rank: the host pool or the tensor's device.
  at::Tensor keep_bytes(int64_t n, const at::Device& device) {
    return options.to_host() ? pool.empty({n}, at::kByte)
                             : at::empty({n}, at::TensorOptions().dtype(at::kByte).device(device));
  }

  // Uniquify: a 16-bit index list of `rows` rows, of which this rank keeps rows
  // [rank * chunk_rows, ...) (zero-padded to chunk_rows); shared by storages of the same row structure.
  struct IndexList {
    std::shared_ptr<ShardedOffloadState> state;
    at::Tensor block;  // chunk_rows int16 labels (label - 32768), as bytes
    at::Tensor reps;   // U int64 on the CPU: the first row of each label
    int64_t rows = 0, unique = 0, chunk_rows = 0;
    int64_t begin(int64_t rank) const { return std::min(rows, rank * chunk_rows); }
    int64_t mine(int64_t rank) const { return std::min(rows, begin(rank) + chunk_rows) - begin(rank); }
    ~IndexList() { state->block_bytes.fetch_sub(block.defined() ? block.numel() : 0); }
  };
  std::vector<std::weak_ptr<IndexList>> index_lists;

  // This rank's block of one storage, shared by every saved view of it. One gather per storage
  // per backward (KeptStorage's rounds).
  struct Shard : edkm::detail::KeptStorage {
    std::shared_ptr<ShardedOffloadState> state;
    at::Tensor block;                  // chunk bytes (zero-padded past the storage end); uniquified: the U x row table
    std::shared_ptr<IndexList> index;  // uniquified: the row -> distinct row index (this rank's block)
    int64_t row_bytes = 0;             // uniquified: bytes per row
    int64_t chunk = 0;
    ~Shard() { state->block_bytes.fetch_sub(block.defined() ? block.numel() : 0); }
  };
  edkm::detail::StorageRegistry<Shard> by_storage;
  using Packed = edkm::detail::SavedView<Shard>;

  // Keeps `bytes` (the storage, uint8 on its device) in `shard` as distinct rows + an index block
  // when its rows repeat enough; false (nothing kept) otherwise. Every rank reaches the same
  // decision: the data are equal on every rank, and the fit to a kept list is all-reduced.
  // Caller holds mu.
  bool uniquify(Shard& shard, const at::Tensor& bytes, int64_t row_bytes) {
    const int64_t nbytes = bytes.numel(), rows = nbytes / row_bytes, world = comm->world_size(), rank = comm->rank();
    index_lists.erase(std::remove_if(index_lists.begin(), index_lists.end(), [](auto& w) { return w.expired(); }),
                      index_lists.end());
    std::shared_ptr<IndexList> list;
    at::Tensor table;
    for (auto it = index_lists.rbegin(); it != index_lists.rend() && !list; ++it) {
      auto candidate = it->lock();
      if (!candidate || candidate->rows != rows ||
          !edkm::detail::uniquify_worth_it(candidate->unique, rows, row_bytes, nbytes))
        continue;
      const auto labels = candidate->block.view(at::kShort).narrow(0, 0, candidate->mine(rank)).to(bytes.device());
      auto fit = edkm::detail::rows_by_index(bytes, row_bytes, labels, candidate->reps.to(bytes.device()),
                                             candidate->begin(rank));
      auto agreed = at::full({1}, fit ? 1 : 0, at::kLong);
      comm->all_reduce_sum(agreed);
      if (agreed.item<int64_t>() == world) {
        list = std::move(candidate);
        table = std::move(*fit);
        index_lists_shared.fetch_add(1);
      }
    }
    if (!list) {
      auto u = edkm::detail::find_unique_rows(bytes, row_bytes);
      if (!u) return false;
      list = std::make_shared<IndexList>();
      list->state = shared_from_this();
      list->rows = rows;
      list->unique = u->unique;
      list->chunk_rows = (rows + world - 1) / world;
      list->reps = u->reps.cpu();
      list->block = keep_bytes(2 * list->chunk_rows, bytes.device());
      const int64_t begin = list->begin(rank), mine = list->mine(rank);
      auto labels = list->block.view(at::kShort);
      if (mine > 0) labels.narrow(0, 0, mine).copy_(u->index.narrow(0, begin, mine));
      if (mine < list->chunk_rows) labels.narrow(0, mine, list->chunk_rows - mine).zero_();
      add_block_bytes(list->block.numel());
      index_lists.push_back(list);
      table = std::move(u->table);
    }
    shard.index = std::move(list);
    shard.row_bytes = row_bytes;
    shard.chunk = table.numel();
    shard.block = keep_bytes(shard.chunk, bytes.device());
    shard.block.copy_(table.view({-1}));
    add_block_bytes(shard.chunk);
    tensors_uniquified.fetch_add(1);
    uniquify_bytes_before.fetch_add(nbytes);
    return true;
  }
};

}  // namespace detail

using State = detail::ShardedOffloadState;

ShardedOffloader::ShardedOffloader(std::shared_ptr<Communicator> comm, ShardedOffloadOptions options) {
  TORCH_CHECK(comm != nullptr, "edkm: ShardedOffloader needs a communicator (dist::init_from_env())");
  options.validate();
  state_ = std::make_shared<State>(std::move(comm), std::move(options));
}

ShardedOffloader::~ShardedOffloader() = default;

std::any ShardedOffloader::pack(const at::Tensor& tensor) {
  auto& st = *state_;
  st.tensors_packed.fetch_add(1);
  auto packed = std::make_shared<State::Packed>();
  const bool plain = edkm::detail::storage_backed(tensor) && (tensor.is_cpu() || tensor.is_cuda());
  if (!plain || tensor.numel() * static_cast<int64_t>(tensor.element_size()) < st.options.min_bytes()) {
    packed->kept = tensor;
    return packed;
  }
  const c10::Storage& storage = tensor.storage();
  const auto nbytes = static_cast<int64_t>(storage.nbytes());
  packed->describe(tensor);
  st.tensors_sharded.fetch_add(1);

  std::lock_guard<std::mutex> lock(st.mu);
  if (auto shard = st.by_storage.find(tensor, nbytes)) {
    st.copies_avoided.fetch_add(1);
    packed->attach(std::move(shard));
    return packed;
  }
  const int64_t world = st.comm->world_size(), rank = st.comm->rank();
  auto shard = std::make_shared<State::Shard>();
  shard->state = state_;
  shard->nbytes = nbytes;
  shard->version = tensor._version();
  shard->device = tensor.device();
  const auto bytes = edkm::detail::storage_bytes(storage, tensor.device());
  const int64_t row_bytes = st.options.uniquify() ? edkm::detail::uniquify_row_bytes(tensor, nbytes) : 0;
  if (row_bytes == 0 || !st.uniquify(*shard, bytes, row_bytes)) {
    shard->chunk = (nbytes + world - 1) / world;
    shard->block = st.keep_bytes(shard->chunk, tensor.device());
    const int64_t begin = std::min(nbytes, rank * shard->chunk), mine = std::min(nbytes, begin + shard->chunk) - begin;
    if (mine > 0) shard->block.narrow(0, 0, mine).copy_(bytes.narrow(0, begin, mine));
    if (mine < shard->chunk) shard->block.narrow(0, mine, shard->chunk - mine).zero_();
    st.add_block_bytes(shard->chunk);
  }
  st.storages_sharded.fetch_add(1);
  st.bytes_sharded.fetch_add(nbytes);
  st.by_storage.add(storage, shard);
  packed->attach(std::move(shard));
  return packed;
}

at::Tensor ShardedOffloader::unpack(const std::any& value) {
  const auto* p = std::any_cast<std::shared_ptr<State::Packed>>(&value);
  TORCH_CHECK(p && *p, "edkm: ShardedOffloader::unpack: the value was not packed by a ShardedOffloader");
  State::Packed& packed = **p;
  if (!packed.storage) return packed.kept;
  auto& shard = *packed.storage;
  std::lock_guard<std::mutex> lock(shard.mu);
  at::Tensor whole;
  if (shard.keep.defined()) {
    whole = shard.keep;
    state_->restores_shared.fetch_add(1);
    shard.seen(packed.round_seen);
  } else {
    // Every rank reaches this gather for the same storage in the same order (the same graph).
    if (shard.index) {
      const auto labels = state_->comm->all_gather(shard.index->block.to(shard.device));
      state_->bytes_gathered.fetch_add(labels.numel());
      whole = edkm::detail::expand_unique_rows(
          shard.block.to(shard.device), labels.view(at::kShort).narrow(0, 0, shard.index->rows), shard.row_bytes);
    } else {
      whole = state_->comm->all_gather(shard.block.to(shard.device));
      state_->bytes_gathered.fetch_add(whole.numel());
    }
    state_->gathers.fetch_add(1);
    shard.start_round(packed.round_seen, whole);
  }
  return packed.view_on(whole);
}

ShardedOffloadStats ShardedOffloader::stats() const {
  const auto& s = *state_;
  ShardedOffloadStats out;
  out.tensors_packed = s.tensors_packed;
  out.tensors_sharded = s.tensors_sharded;
  out.storages_sharded = s.storages_sharded;
  out.copies_avoided = s.copies_avoided;
  out.bytes_sharded = s.bytes_sharded;
  out.block_bytes = s.block_bytes;
  out.block_bytes_peak = s.block_bytes_peak;
  out.gathers = s.gathers;
  out.bytes_stored = s.bytes_stored;
  out.bytes_gathered = s.bytes_gathered;
  out.restores_shared = s.restores_shared;
  out.tensors_uniquified = s.tensors_uniquified;
  out.uniquify_bytes_before = s.uniquify_bytes_before;
  out.index_lists_shared = s.index_lists_shared;
  return out;
}

int64_t ShardedOffloader::host_pool_reserved_bytes() const { return state_->pool.stats().reserved_bytes; }
int64_t ShardedOffloader::host_pool_peak_reserved_bytes() const { return state_->pool.stats().peak_reserved_bytes; }

}  // namespace edkm::dist
