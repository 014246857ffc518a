// Sharded clustering: the table and streaming engines over a row block of a weight, with the
// reductions all-reduced across the ranks (the hooks in dkm/table.cpp and dkm/stream.cpp), the
// sharded initialisation, the DDP-style replicated form, and the gradient all-reduce.
#include <ATen/TensorOperators.h>
#include <ATen/core/ivalue.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dkm/internal.h"
#include "edkm/distributed/distributed.h"

namespace edkm {
namespace dist {
namespace {

struct CommHolder : torch::CustomClassHolder {
  std::shared_ptr<Communicator> comm;
};

c10::IValue comm_to_ivalue(const std::shared_ptr<Communicator>& comm) {
  auto holder = c10::make_intrusive<CommHolder>();
  holder->comm = comm;
  return c10::IValue::make_capsule(std::move(holder));
}

std::shared_ptr<Communicator> comm_from_ivalue(const c10::IValue& v) {
  return static_cast<CommHolder*>(v.toCapsule().get())->comm;
}

// Rows of every rank (row_block of each): all ranks agree on them without communication.
std::vector<int64_t> rows_of_ranks(int64_t total_rows, const Communicator& comm, int64_t multiple) {
  std::vector<int64_t> rows;
  const int64_t world = comm.world_size();
  const int64_t units = (total_rows + multiple - 1) / multiple;
  const int64_t per = (units + world - 1) / world * multiple;
  for (int64_t r = 0; r < world; ++r) {
    const int64_t begin = std::min(total_rows, r * per);
    rows.push_back(std::min(total_rows, begin + per) - begin);
  }
  return rows;
}

// Forward: the blocks of W_soft gathered into the whole clustered weight. Backward: the upstream
// gradient summed over the ranks, this rank's rows of it (a reduce-scatter).
class GatherRows : public torch::autograd::Function<GatherRows> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& block,
                            const std::shared_ptr<Communicator>* comm, int64_t begin) {
    ctx->saved_data["comm"] = comm_to_ivalue(*comm);
    ctx->saved_data["begin"] = begin;
    ctx->saved_data["rows"] = block.size(0);
    return all_gather_rows(block.detach(), **comm);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto comm = comm_from_ivalue(ctx->saved_data["comm"]);
    auto g = grads[0].contiguous().clone();
    comm->all_reduce_sum(g);
    return {g.narrow(0, ctx->saved_data["begin"].toInt(), ctx->saved_data["rows"].toInt()), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

namespace {
// What every rank's row block must share past its rows (-1 for a block without rows).
int64_t elements_per_row(const at::Tensor& block) {
  return block.defined() && block.dim() >= 1 && block.size(0) > 0 ? block.numel() / block.size(0) : -1;
}
}  // namespace

RowBlock row_block(int64_t total_rows, const Communicator& comm, int64_t multiple) {
  TORCH_CHECK(total_rows >= 0, "edkm: row_block of ", total_rows, " rows");
  TORCH_CHECK(multiple >= 1, "edkm: row_block multiple must be >= 1, got ", multiple);
  const auto rows = rows_of_ranks(total_rows, comm, multiple);
  RowBlock b;
  for (int64_t r = 0; r < comm.rank(); ++r) b.begin += rows[r];
  b.rows = rows[comm.rank()];
  return b;
}

at::Tensor all_gather_rows(const at::Tensor& block, Communicator& comm) {
  TORCH_CHECK(block.defined() && block.dim() >= 1, "edkm: all_gather_rows needs a tensor with at least 1 dim");
  if (comm.world_size() == 1) return block.clone();
  // Rows, then what must match (dims, elements per row, dtype): a block of other columns or dtype
  // would abort inside the collective that gathers the rows.
  const int64_t per_row = elements_per_row(block);
  const auto shape =
      comm.all_gather(at::tensor({block.size(0), block.dim(), per_row, static_cast<int64_t>(block.scalar_type())},
                                 at::TensorOptions().dtype(at::kLong)))
          .cpu()
          .contiguous();
  const auto* f = shape.data_ptr<int64_t>();
  std::vector<int64_t> n(static_cast<size_t>(comm.world_size()));
  int64_t most = 0;
  for (int64_t r = 0; r < comm.world_size(); ++r) {
    n[r] = f[4 * r];
    most = std::max(most, n[r]);
    TORCH_CHECK(f[4 * r + 1] == f[1] && f[4 * r + 2] == f[2] && f[4 * r + 3] == f[3], "edkm: all_gather_rows: rank ", r,
                "'s block (", f[4 * r + 1], " dims, ", f[4 * r + 2], " elements per row, dtype ",
                static_cast<at::ScalarType>(f[4 * r + 3]), ") does not match rank 0's (", f[1], " dims, ", f[2],
                " elements per row, dtype ", static_cast<at::ScalarType>(f[3]), ")");
  }
  auto padded = block.contiguous();
  if (block.size(0) < most) {
    auto sizes = block.sizes().vec();
    sizes[0] = most - block.size(0);
    padded = at::cat({padded, at::zeros(sizes, block.options())});
  }
  auto all = comm.all_gather(padded);
  std::vector<at::Tensor> parts;
  for (int64_t r = 0; r < comm.world_size(); ++r) parts.push_back(all.narrow(0, r * most, n[r]));
  return at::cat(parts);
}

at::Tensor init_centroids_sharded(const at::Tensor& block, const DKMOptions& options, Communicator& comm,
                                  const at::Tensor& scale) {
  TORCH_CHECK(block.defined(), "edkm: init_centroids_sharded of an undefined weight block");
  const auto whole = all_gather_rows(block.detach(), comm);
  const auto whole_scale = scale.defined() ? all_gather_rows(scale.detach(), comm) : scale;
  return functional::init_centroids(whole, options, whole_scale);
}

namespace {

// What every rank must agree on before the sharded passes (their sums are all-reduced): the
// block's geometry past its rows, the dtype, the options that change the math, and whether the
// rank's own checks passed. One all_gather; every rank then raises the same error, naming the
// field or the rank, instead of one rank raising while the others wait in a collective (or, for
// options such as tau that change no shape, running on with wrong sums).
void agree_across_ranks(const at::Tensor& block, const at::Tensor& centroids, const DKMOptions& o,
                        const at::Tensor& scale, const std::string& local_error, Communicator& comm) {
  auto bits_of = [](double v) {
    int64_t i;
    std::memcpy(&i, &v, sizeof i);
    return i;
  };
  const std::vector<std::pair<const char*, int64_t>> fields = {
      {"this rank's own checks", local_error.empty() ? 0 : 1},
      {"the weight's dims", block.defined() ? block.dim() : -1},
      {"the elements per row", elements_per_row(block)},
      {"the dtype", block.defined() ? static_cast<int64_t>(block.scalar_type()) : -1},
      {"the centroids' size", centroids.defined() ? centroids.numel() : -1},
      {"a per-channel scale", scale.defined() ? 1 : 0},
      {"bits", o.bits()},
      {"cluster_dim", o.cluster_dim()},
      {"granularity", static_cast<int64_t>(o.granularity())},
      {"engine", static_cast<int64_t>(o.engine())},
      {"max_iter", o.max_iter()},
      {"tau", bits_of(o.tau())},
      {"epsilon", bits_of(o.epsilon())},
      {"zero_threshold", bits_of(o.zero_threshold())},
      {"prune_threshold", bits_of(o.prune_threshold())},
      {"enforce_zero", o.enforce_zero() ? 1 : 0},
      {"table_fp32_as_bf16", o.table_fp32_as_bf16() ? 1 : 0},
  };
  std::vector<int64_t> mine;
  for (const auto& f : fields) mine.push_back(f.second);
  const int64_t n = static_cast<int64_t>(mine.size());
  at::Tensor local = at::tensor(mine, at::TensorOptions().dtype(at::kLong)).view({1, n});
  if (block.defined() && block.is_cuda()) local = local.to(block.device());  // NCCL gathers device tensors
  const at::Tensor all = comm.all_gather(local).cpu().contiguous().view({comm.world_size(), n});
  const int64_t* v = all.data_ptr<int64_t>();
  TORCH_CHECK(local_error.empty(), local_error);
  for (int64_t r = 0; r < comm.world_size(); ++r)
    TORCH_CHECK(v[r * n] == 0, "edkm: dkm_cluster_sharded: rank ", r,
                " refused its block (its error says why); every rank stops here");
  for (int64_t i = 1; i < n; ++i)
    for (int64_t r = 1; r < comm.world_size(); ++r)
      TORCH_CHECK(v[r * n + i] == v[i], "edkm: dkm_cluster_sharded: the ranks disagree on ", fields[i].first,
                  " (rank 0: ", v[i], ", rank ", r, ": ", v[r * n + i],
                  "): every rank must call it with the same options, dtype and columns");
}

}  // namespace

DKMOutput dkm_cluster_sharded(const at::Tensor& block, const at::Tensor& centroids, const DKMOptions& options,
                              const std::shared_ptr<Communicator>& comm, const at::Tensor& scale) {
  TORCH_CHECK(comm != nullptr, "edkm: dkm_cluster_sharded needs a communicator (dist::init_from_env())");
  // This rank's checks; their verdict is shared before anything else is (agree_across_ranks).
  std::string error;
  ClusterLayout l;
  Engine engine = Engine::kAuto;
  try {
    TORCH_CHECK(block.defined() && block.dim() >= 1 && block.size(0) > 0,
                "edkm: dkm_cluster_sharded needs a non-empty row block on every rank (rank ", comm->rank(),
                " has none: use fewer ranks than rows)");
    l = edkm::detail::check_inputs(block, centroids, options, scale, /*scale_needs_flag=*/true);
    // Grouped LUTs: a rank's block may hold exactly one group, which would pass a count of the
    // block's groups and then be all-reduced with the other ranks' groups into one LUT.
    TORCH_CHECK(options.granularity() == Granularity::kPerTensor && l.groups == 1,
                "edkm: dkm_cluster_sharded needs a per-tensor LUT (granularity kPerTensor), got ",
                to_string(options.granularity()),
                " granularity: grouped LUTs are independent, cluster each rank's whole groups with "
                "functional::dkm_cluster instead");
    // Vectors of cluster_dim > 1 are consecutive rows at one column: a block must hold whole
    // vectors, or its vectors are not the whole weight's.
    TORCH_CHECK(block.size(0) % options.cluster_dim() == 0, "edkm: dkm_cluster_sharded: rank ", comm->rank(),
                "'s block has ", block.size(0), " rows, not a multiple of cluster_dim ", options.cluster_dim(),
                ": take the blocks from row_block(rows, comm, cluster_dim)");
    TORCH_CHECK(options.engine() != Engine::kDense,
                "edkm: dkm_cluster_sharded runs the table and streaming engines; the dense engine is not sharded by "
                "rows (use dist::ShardedOffloader around functional::dkm_cluster for eDKM's dense sharding)");
    engine = edkm::detail::resolve_engine(block, l, options);
    TORCH_CHECK(engine != Engine::kDense,
                "edkm: dkm_cluster_sharded: neither the table nor the streaming engine takes this weight (",
                edkm::detail::streaming_unsupported(block, l, options), ")");
  } catch (const c10::Error& e) {
    error = e.what_without_backtrace();
  }
  if (comm->world_size() > 1) {
    agree_across_ranks(block, centroids, options, scale, error, *comm);
  } else {
    TORCH_CHECK(error.empty(), error);
  }
  return edkm::detail::cluster(block, centroids, options, scale, l, engine, [comm](at::Tensor& t) {
    if (comm->world_size() > 1) comm->all_reduce_sum(t);
  });
}

DKMOutput dkm_cluster_replicated(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                                 const std::shared_ptr<Communicator>& comm, const at::Tensor& scale) {
  TORCH_CHECK(comm != nullptr, "edkm: dkm_cluster_replicated needs a communicator (dist::init_from_env())");
  TORCH_CHECK(weight.defined() && weight.dim() >= 1, "edkm: dkm_cluster_replicated needs a weight with >= 1 dim");
  const auto b = row_block(weight.size(0), *comm, options.cluster_dim());
  const auto block_scale = scale.defined() ? scale.narrow(0, b.begin, b.rows) : scale;
  auto out = dkm_cluster_sharded(weight.narrow(0, b.begin, b.rows), centroids, options, comm, block_scale);
  out.weight = GatherRows::apply(out.weight, &comm, b.begin);
  return out;
}

void all_reduce_gradients(const std::vector<at::Tensor>& params, Communicator& comm,
                          const GradientReduceOptions& options) {
  TORCH_CHECK(options.bucket_bytes() > 0, "edkm: GradientReduceOptions::bucket_bytes must be > 0, got ",
              options.bucket_bytes());
  if (comm.world_size() == 1) return;
  // Buckets per (dtype, device), in the order of `params` (the same on every rank).
  std::map<std::tuple<int, int, int>, std::vector<at::Tensor>> by_kind;
  std::vector<std::tuple<int, int, int>> order;
  for (const auto& p : params) {
    if (!p.defined() || !p.grad().defined()) continue;
    const auto& g = p.grad();
    TORCH_CHECK(!g.is_sparse(), "edkm: all_reduce_gradients takes dense gradients");
    const std::tuple<int, int, int> key{static_cast<int>(g.scalar_type()), static_cast<int>(g.device().type()),
                                        g.device().index()};
    if (by_kind.find(key) == by_kind.end()) order.push_back(key);
    by_kind[key].push_back(g);
  }
  const double scale = options.average() ? 1.0 / static_cast<double>(comm.world_size()) : 1.0;
  auto flush = [&](std::vector<at::Tensor>& bucket) {
    if (bucket.empty()) return;
    std::vector<at::Tensor> flat;
    for (const auto& g : bucket) flat.push_back(g.reshape({-1}));
    auto buffer = at::cat(flat);
    comm.all_reduce_sum(buffer);
    if (options.average()) buffer.mul_(scale);
    int64_t offset = 0;
    for (auto& g : bucket) {
      g.copy_(buffer.narrow(0, offset, g.numel()).view(g.sizes()));
      offset += g.numel();
    }
    bucket.clear();
  };
  for (const auto& key : order) {
    std::vector<at::Tensor> bucket;
    int64_t bytes = 0;
    for (const auto& g : by_kind[key]) {
      const int64_t b = g.numel() * static_cast<int64_t>(g.element_size());
      if (!bucket.empty() && bytes + b > options.bucket_bytes()) {
        flush(bucket);
        bytes = 0;
      }
      bucket.push_back(g);
      bytes += b;
    }
    flush(bucket);
  }
}

}  // namespace dist
}  // namespace edkm
