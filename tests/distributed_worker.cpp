// One process of the distributed tests, launched by ctest through
//   torchrun --standalone --no-python --nproc-per-node N edkm_distributed_worker MODE
// MODE check: the sharded engines (table bf16, streaming fp32 / bf16 / scaled vectors), the dense
//   engine under ShardedOffloader, the replicated DDP-style form with all_reduce_gradients, and the
//   communicator's collectives, each against the single-process result computed here; exits 1 on
//   any mismatch.
// MODE timeout-init: rank 1 exits before the rendezvous; rank 0 must fail with the timeout error.
// MODE timeout-collective: rank 1 exits after the rendezvous; rank 0's all-reduce must fail.
#include <ATen/ATen.h>
#include <edkm/distributed/distributed.h>

#include <chrono>
#include <functional>
#include <iostream>
#include <string>

#include "test_util.h"

namespace {

using edkm::test::max_rel;
int failures = 0;
int64_t my_rank = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::cerr << "[rank " << my_rank << "] MISMATCH: " << what << "\n";
  }
}

void expect_close(const at::Tensor& a, const at::Tensor& b, double tol, const std::string& what) {
  const bool shapes = a.sizes() == b.sizes();
  const double err = shapes ? max_rel(a, b) : 1e30;
  expect(shapes && err <= tol, what + " (max rel " + std::to_string(err) + ")");
}

// The single-process reference and the sharded run of one configuration.
void check_sharded(const std::shared_ptr<edkm::Communicator>& comm, const at::Tensor& w, const edkm::DKMOptions& o,
                   bool scaled, const std::string& name) {
  const auto r = edkm::test::llm_like(w.sizes().vec(), 99, at::kFloat);  // the loss: sum(W_soft * R)
  const auto scale = scaled ? edkm::functional::channel_scale(w, o.scale_scheme()) : at::Tensor();
  const auto c = edkm::functional::init_centroids(w, o, scale);
  const auto ref = edkm::test::run(w, c, r, o, scale);

  const auto b = edkm::dist::row_block(w.size(0), *comm, o.cluster_dim());
  const auto block = w.narrow(0, b.begin, b.rows).clone().requires_grad_(true);
  const auto block_scale = scaled ? scale.narrow(0, b.begin, b.rows) : scale;
  const auto c_sharded = edkm::dist::init_centroids_sharded(block.detach(), o, *comm, block_scale);
  expect(at::equal(c_sharded, c), name + ": initial centroids differ from the single-process init");
  auto out = edkm::dist::dkm_cluster_sharded(block, c_sharded, o, comm, block_scale);
  (out.weight.to(at::kFloat) * r.narrow(0, b.begin, b.rows)).sum().backward();
  expect_close(out.weight, ref.out.narrow(0, b.begin, b.rows), 1e-6, name + ": clustered weight");
  expect_close(out.centroids, ref.centroids, 1e-6, name + ": centroids");
  expect_close(block.grad(), ref.grad.narrow(0, b.begin, b.rows), 1e-6, name + ": weight gradient");
  expect(out.iterations == ref.iterations,
         name + ": iterations " + std::to_string(out.iterations) + " vs " + std::to_string(ref.iterations));
}

// Dense engine: every rank runs the same DKM; under ShardedOffloader the result is bitwise equal.
void check_sharded_offloader(const std::shared_ptr<edkm::Communicator>& comm) {
  const auto w = edkm::test::llm_like({48, 64}, 7, at::kFloat);
  const auto r = edkm::test::llm_like({48, 64}, 8, at::kFloat);
  const auto o = edkm::DKMOptions(3).engine(edkm::Engine::kDense);
  const auto c = edkm::functional::init_centroids(w, o);
  const auto ref = edkm::test::run(w, c, r, o);
  auto off = std::make_shared<edkm::dist::ShardedOffloader>(comm, edkm::dist::ShardedOffloadOptions().min_bytes(0));
  edkm::test::Run got;
  {
    edkm::SavedTensorHooksGuard guard(off);
    got = edkm::test::run(w, c, r, o);
  }
  expect(at::equal(got.out, ref.out), "dense+ShardedOffloader: clustered weight not bitwise equal");
  expect(at::equal(got.centroids, ref.centroids), "dense+ShardedOffloader: centroids not bitwise equal");
  expect(at::equal(got.grad, ref.grad), "dense+ShardedOffloader: gradient not bitwise equal");
  const auto s = off->stats();
  expect(s.storages_kept > 0 && s.restores > 0, "dense+ShardedOffloader: nothing sharded: " + s.to_string());
  expect(s.kept_bytes == 0, "dense+ShardedOffloader: blocks still held after backward: " + s.to_string());
  const int64_t world = comm->world_size();
  // Every storage is kept as one ceil(bytes / world) block: at most 1/world of the bytes (+ padding).
  expect(s.kept_bytes_peak <= s.storage_bytes_kept / world + s.storages_kept,
         "dense+ShardedOffloader: a rank kept more than its 1/world share: " + s.to_string());
  if (my_rank == 0) std::cout << "ShardedOffloader: " << s.to_string() << "\n";
}

// eDKM combined: bf16 dense DKM under ShardedOffloader(uniquify) is bitwise the plain run, and a
// rank keeps fewer bytes than with sharding alone (the N x K maps as distinct rows + index blocks).
void check_sharded_uniquify(const std::shared_ptr<edkm::Communicator>& comm) {
  const auto w = edkm::test::llm_like({256, 64}, 12, at::kBFloat16);
  const auto r = edkm::test::llm_like({256, 64}, 13, at::kBFloat16);
  const auto o = edkm::DKMOptions(3).engine(edkm::Engine::kDense).epsilon(0).max_iter(3);
  const auto c = edkm::functional::init_centroids(w, o);
  const auto ref = edkm::test::run(w, c, r, o);
  edkm::dist::ShardedOffloadStats kept[2];
  for (bool uniquify : {false, true}) {
    auto off = std::make_shared<edkm::dist::ShardedOffloader>(
        comm, edkm::dist::ShardedOffloadOptions().min_bytes(1024).uniquify(uniquify));
    edkm::test::Run got;
    {
      edkm::SavedTensorHooksGuard guard(off);
      got = edkm::test::run(w, c, r, o);
    }
    const std::string name = uniquify ? "bf16 dense+ShardedOffloader(uniquify)" : "bf16 dense+ShardedOffloader";
    expect(at::equal(got.out, ref.out), name + ": clustered weight not bitwise equal");
    expect(at::equal(got.centroids, ref.centroids), name + ": centroids not bitwise equal");
    expect(at::equal(got.grad, ref.grad), name + ": gradient not bitwise equal");
    kept[uniquify] = off->stats();
    expect(kept[uniquify].kept_bytes == 0, name + ": bytes still held after backward: " + kept[uniquify].to_string());
  }
  expect(kept[1].tensors_uniquified > 0 && kept[1].index_lists_shared > 0,
         "ShardedOffloader(uniquify): no N x K map uniquified / no index list shared: " + kept[1].to_string());
  expect(kept[0].tensors_uniquified == 0, "ShardedOffloader: uniquified without the option");
  expect(kept[1].kept_bytes_peak < kept[0].kept_bytes_peak,
         "ShardedOffloader(uniquify): a rank kept no fewer bytes than with sharding alone: " + kept[1].to_string() +
             " vs " + kept[0].to_string());
  if (my_rank == 0)
    std::cout << "ShardedOffloader: " << kept[0].to_string() << "\nShardedOffloader(uniquify): " << kept[1].to_string()
              << "\n";
}

// DDP-style: replicated weight, each rank its own loss; after all_reduce_gradients (average) every
// rank holds d(mean of the ranks' losses)/dw.
void check_replicated(const std::shared_ptr<edkm::Communicator>& comm) {
  const int64_t world = comm->world_size();
  // fp32: a bf16 W_soft would round each rank's upstream gradient before the sum
  const auto w = edkm::test::llm_like({48, 64}, 11, at::kFloat);
  const auto o = edkm::DKMOptions(3).engine(edkm::Engine::kStreaming);
  const auto c = edkm::functional::init_centroids(w, o);
  auto mean_r = at::zeros({48, 64});
  for (int64_t k = 0; k < world; ++k) mean_r += edkm::test::llm_like({48, 64}, 100 + k, at::kFloat);
  mean_r /= static_cast<double>(world);
  const auto ref = edkm::test::run(w, c, mean_r, o);

  auto wr = w.clone().requires_grad_(true);
  auto out = edkm::dist::dkm_cluster_replicated(wr, c, o, comm);
  (out.weight.to(at::kFloat) * edkm::test::llm_like({48, 64}, 100 + my_rank, at::kFloat)).sum().backward();
  edkm::dist::all_reduce_gradients({wr}, *comm);
  expect_close(out.weight, ref.out, 1e-6, "replicated: clustered weight");
  expect_close(wr.grad(), ref.grad, 1e-6, "replicated + all_reduce_gradients: weight gradient");
}

void check_collectives(const std::shared_ptr<edkm::Communicator>& comm) {
  const int64_t world = comm->world_size(), rank = comm->rank();
  auto t = at::full({3}, static_cast<double>(rank + 1), at::kDouble);
  comm->all_reduce_sum(t);
  expect(at::equal(t, at::full({3}, world * (world + 1) / 2.0, at::kDouble)), "all_reduce_sum");
  auto g = comm->all_gather(at::full({2, 2}, rank, at::kLong));
  expect(g.size(0) == 2 * world && g[2 * world - 1][0].item<int64_t>() == world - 1, "all_gather");
  auto b = at::full({4}, rank == 0 ? 7.0f : -1.0f);
  comm->broadcast(b, 0);
  expect(at::equal(b, at::full({4}, 7.0f)), "broadcast");
  // Uneven blocks: 10 rows over `world` ranks.
  const auto whole = at::arange(30, at::kFloat).view({10, 3});
  const auto blk = edkm::dist::row_block(10, *comm);
  expect(at::equal(edkm::dist::all_gather_rows(whole.narrow(0, blk.begin, blk.rows), *comm), whole),
         "all_gather_rows (uneven)");
  comm->barrier();
}

// Ranks that call the sharded forms differently: every rank raises the same named error (one
// agreement all_gather first), none runs on with wrong sums or dies inside a collective, and the
// communicator stays usable.
void check_disagreements(const std::shared_ptr<edkm::Communicator>& comm) {
  const int64_t world = comm->world_size(), rank = comm->rank();
  auto raises = [&](const std::function<void()>& f, const std::string& part, const std::string& what) {
    std::string msg;
    try {
      f();
    } catch (const c10::Error& e) {
      msg = e.what();
    }
    expect(msg.find(part) != std::string::npos,
           what + ": expected an error with '" + part + "', got '" + msg.substr(0, msg.find('\n')) + "'");
  };
  const auto w = edkm::test::llm_like({8 * world, 16}, 9, at::kFloat);
  const auto b = edkm::dist::row_block(w.size(0), *comm);
  const auto blk = w.narrow(0, b.begin, b.rows).contiguous();
  const auto base = edkm::DKMOptions(2).engine(edkm::Engine::kStreaming);
  const auto c = edkm::dist::init_centroids_sharded(blk, base, *comm);
  // tau differs on the last rank (no shape differs: this ran on silently).
  auto other = base;
  if (rank == world - 1) other.tau(1e-2);
  raises([&] { edkm::dist::dkm_cluster_sharded(blk, c, other, comm); }, "disagree on tau", "tau per rank");
  // Grouped LUTs, one group a rank (the block's own count of groups was 1).
  const auto grouped = edkm::DKMOptions(2)
                           .engine(edkm::Engine::kStreaming)
                           .granularity(edkm::Granularity::kPerGroupedChannel)
                           .group_size(8);
  raises([&] { edkm::dist::dkm_cluster_sharded(blk, c, grouped, comm); }, "per-tensor LUT", "grouped LUTs");
  // cluster_dim 2 on blocks of odd rows (the last rank's; the others agree to stop).
  const auto cd2 = edkm::DKMOptions(2).engine(edkm::Engine::kStreaming).cluster_dim(2);
  const int64_t rows = rank == world - 1 ? 3 : 4;
  const auto odd = edkm::test::llm_like({rows, 16}, 10 + rank, at::kFloat);
  raises(
      [&] {
        edkm::dist::dkm_cluster_sharded(odd, at::zeros({1, 4, 2}), cd2, comm);
      },
      rank == world - 1 ? "not a multiple of cluster_dim 2" : "refused its block", "cluster_dim 2, odd block");
  // Columns per rank differ: refused by name before the gather of the rows.
  const auto wide = at::zeros({2, rank == world - 1 ? 17 : 16});
  raises([&] { edkm::dist::all_gather_rows(wide, *comm); }, "does not match rank 0's", "columns per rank");
  comm->barrier();  // still usable
}

int run_check() {
  auto comm = edkm::dist::init_from_env(edkm::dist::DistOptions().timeout_s(120));
  my_rank = comm->rank();
  check_collectives(comm);
  check_sharded(comm, edkm::test::llm_like({48, 64}, 1, at::kBFloat16),
                edkm::DKMOptions(3).engine(edkm::Engine::kTable), false, "table bf16");
  check_sharded(comm, edkm::test::llm_like({48, 64}, 2, at::kFloat),
                edkm::DKMOptions(3).engine(edkm::Engine::kTable).table_fp32_as_bf16(true), false, "table fp32-as-bf16");
  check_sharded(comm, edkm::test::llm_like({48, 64}, 3, at::kFloat),
                edkm::DKMOptions(3).engine(edkm::Engine::kStreaming), false, "streaming fp32");
  check_sharded(comm, edkm::test::llm_like({48, 64}, 4, at::kBFloat16),
                edkm::DKMOptions(4).engine(edkm::Engine::kStreaming), false, "streaming bf16");
  check_sharded(comm, edkm::test::llm_like({48, 64}, 5, at::kFloat),
                edkm::DKMOptions(2).engine(edkm::Engine::kStreaming).per_channel_scale(true).cluster_dim(2), true,
                "streaming fp32 scaled cluster_dim 2");
  check_sharded_offloader(comm);
  check_sharded_uniquify(comm);
  check_replicated(comm);
  if (comm->world_size() > 1) check_disagreements(comm);
  comm->barrier();
  std::cout << "[rank " << my_rank << " of " << comm->world_size() << "] " << (failures ? "FAILED" : "all equal")
            << "\n";
  return failures == 0 ? 0 : 1;
}

// Rank 1 leaves (before the rendezvous, or before the first collective); rank 0 must fail with
// the timeout error within the timeout (plus slack), never hang.
int run_timeout(bool after_init) {
  const double timeout_s = 3;
  const auto env = edkm::dist::LaunchEnv::from_environment();
  if (env.world_size != 2) {
    std::cerr << "timeout modes need 2 processes\n";
    return 2;
  }
  if (env.rank == 1 && !after_init) return 0;
  const auto start = std::chrono::steady_clock::now();
  try {
    auto comm = edkm::dist::init_from_env(edkm::dist::DistOptions().timeout_s(timeout_s));
    if (env.rank == 1) return 0;  // leaves before the first collective
    auto t = at::ones({4});
    comm->all_reduce_sum(t);
    std::cerr << "rank 0: the all-reduce succeeded without rank 1\n";
    return 1;
  } catch (const c10::Error& e) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const std::string msg = e.what();
    const bool named = msg.find("a rank died or never joined") != std::string::npos &&
                       msg.find("timed out after 3 s") != std::string::npos;
    std::cout << "rank " << env.rank << " failed after " << s << " s: " << msg.substr(0, msg.find('\n')) << "\n";
    return named && s < timeout_s + 20 ? 0 : 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "check";
  try {
    if (mode == "check") return run_check();
    if (mode == "timeout-init") return run_timeout(false);
    if (mode == "timeout-collective") return run_timeout(true);
    std::cerr << "usage: edkm_distributed_worker check|timeout-init|timeout-collective\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "[rank " << my_rank << "] error: " << e.what() << "\n";
    return 1;
  }
}
