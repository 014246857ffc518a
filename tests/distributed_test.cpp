// edkm/distributed/distributed.h in one process: the launch environment's errors, the world of one (every
// collective the identity; sharded engines and ShardedOffloader bitwise equal to the plain ones),
// row blocks, refused options. The multi-process runs are tests/distributed_worker.cpp.
#include <edkm/distributed/distributed.h>

#include <ATen/Context.h>

#include <cstdlib>

#include "test_util.h"

namespace edkm {
namespace {

// Sets / unsets the launch variables for one test and restores them after.
class LaunchEnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVars) unsetenv(v);
  }
  void TearDown() override {
    for (const char* v : kVars) unsetenv(v);
  }
  static constexpr const char* kVars[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"};
};

TEST_F(LaunchEnvTest, MissingOrBadVariablesNameTheProblem) {
  test::expect_error([] { dist::LaunchEnv::from_environment(); }, {"RANK is not set", "torchrun"});
  setenv("RANK", "0", 1);
  test::expect_error([] { dist::LaunchEnv::from_environment(); }, {"WORLD_SIZE is not set"});
  setenv("WORLD_SIZE", "two", 1);
  test::expect_error([] { dist::LaunchEnv::from_environment(); }, {"WORLD_SIZE='two' is not an integer"});
  setenv("WORLD_SIZE", "2", 1);
  test::expect_error([] { dist::LaunchEnv::from_environment(); }, {"MASTER_ADDR is not set"});
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  test::expect_error([] { dist::LaunchEnv::from_environment(); }, {"MASTER_PORT is not set"});
  setenv("MASTER_PORT", "70000", 1);
  test::expect_error([] { dist::LaunchEnv::from_environment(); }, {"MASTER_PORT must be in 1..65535"});
  setenv("MASTER_PORT", "29500", 1);
  setenv("RANK", "2", 1);
  test::expect_error([] { dist::LaunchEnv::from_environment(); }, {"RANK must be in [0, WORLD_SIZE = 2)"});
  setenv("RANK", "1", 1);
  const auto env = dist::LaunchEnv::from_environment();
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.world_size, 2);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_port, 29500);
  test::expect_error([] { dist::init_from_env(dist::DistOptions().timeout_s(0)); }, {"timeout_s must be > 0"});
}

// torchrun's convention: one process per GPU, rank r of a node on cuda:LOCAL_RANK.
TEST_F(LaunchEnvTest, LocalRankPicksTheDevice) {
  dist::LaunchEnv env;
  env.rank = 5;
  env.world_size = 8;
  env.local_rank = 1;
  EXPECT_EQ(dist::local_device(env, 4), at::Device(at::kCUDA, 1));
  EXPECT_EQ(dist::local_device(env, 0), at::Device(at::kCPU));
  env.local_rank = 3;
  test::expect_error([&] { dist::local_device(env, 2); }, {"LOCAL_RANK = 3", "2 CUDA device(s)", "--nproc-per-node"});
  // From the environment: LOCAL_RANK (default RANK) and this process's devices.
  setenv("RANK", "1", 1);
  setenv("WORLD_SIZE", "2", 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  setenv("MASTER_PORT", "29500", 1);
  setenv("LOCAL_RANK", "0", 1);
  const bool gpu = at::hasCUDA();
  EXPECT_EQ(dist::local_device(), gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU));
  unsetenv("RANK");
  unsetenv("WORLD_SIZE");
  unsetenv("LOCAL_RANK");
  EXPECT_EQ(dist::local_device(), gpu ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU));  // rank 0 of 1
}

TEST_F(LaunchEnvTest, WorldOfOneFromTheEnvironment) {
  test::expect_error([] { dist::init_from_env(); }, {"RANK is not set"});
  EXPECT_EQ(dist::init_from_env(dist::DistOptions().allow_world_of_one(true))->world_size(), 1);
  setenv("RANK", "0", 1);
  setenv("WORLD_SIZE", "1", 1);
  auto comm = dist::init_from_env();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->world_size(), 1);
  EXPECT_EQ(comm->backend(), "single");
}

TEST(WorldOfOne, CollectivesAreTheIdentity) {
  auto comm = dist::world_of_one();
  auto t = at::arange(6, at::kFloat);
  comm->all_reduce_sum(t);
  EXPECT_TRUE(at::equal(t, at::arange(6, at::kFloat)));
  EXPECT_TRUE(at::equal(comm->all_gather(t), t));
  comm->broadcast(t, 0);
  test::expect_error([&] { comm->broadcast(t, 1); }, {"broadcast from rank 1"});
  comm->barrier();
  EXPECT_TRUE(at::equal(dist::all_gather_rows(t.view({3, 2}), *comm), t.view({3, 2})));
}

// A communicator that only knows its place (row_block needs no collective).
struct Place : Communicator {
  Place(int64_t r, int64_t w) : r_(r), w_(w) {}
  int64_t rank() const override { return r_; }
  int64_t world_size() const override { return w_; }
  std::string backend() const override { return "place"; }
  void all_reduce_sum(at::Tensor&) override { FAIL(); }
  at::Tensor all_gather(const at::Tensor& t) override { return t; }
  void broadcast(at::Tensor&, int64_t) override {}
  void barrier() override {}
  int64_t r_, w_;
};

TEST(RowBlock, CoversTheRowsOnceInRankOrder) {
  for (int64_t rows : {1, 7, 10, 48, 4096})
    for (int64_t world : {1, 2, 3, 4, 8})
      for (int64_t multiple : {1, 2, 8}) {
        if (rows % multiple) continue;
        int64_t next = 0;
        for (int64_t r = 0; r < world; ++r) {
          const auto b = dist::row_block(rows, Place(r, world), multiple);
          EXPECT_EQ(b.begin, std::min(next, rows));
          EXPECT_EQ(b.rows % multiple == 0 || b.begin + b.rows == rows, true);
          next = b.begin + b.rows;
        }
        EXPECT_EQ(next, rows) << rows << " rows, world " << world;
      }
  EXPECT_EQ(dist::row_block(10, Place(1, 4)).begin, 3);
  EXPECT_EQ(dist::row_block(10, Place(3, 4)).rows, 1);
}

TEST(ShardedDKM, WorldOfOneIsBitwiseThePlainEngine) {
  auto comm = dist::world_of_one();
  const auto g = test::llm_like({32, 48}, 3);
  for (auto [dtype, engine] : {std::pair{at::kBFloat16, Engine::kTable}, std::pair{at::kFloat, Engine::kStreaming},
                               std::pair{at::kBFloat16, Engine::kStreaming}}) {
    const auto w = test::llm_like({32, 48}, 1, dtype);
    const auto o = DKMOptions(3).engine(engine);
    const auto c = dist::init_centroids_sharded(w, o, *comm);
    EXPECT_TRUE(at::equal(c, functional::init_centroids(w, o)));
    const auto ref = test::run(w, c, g, o);
    auto wr = w.clone().requires_grad_(true);
    auto out = dist::dkm_cluster_sharded(wr, c, o, comm);
    (out.weight.to(at::kFloat) * g).sum().backward();
    EXPECT_TRUE(at::equal(out.weight, ref.out)) << to_string(engine);
    EXPECT_TRUE(at::equal(out.centroids, ref.centroids)) << to_string(engine);
    EXPECT_TRUE(at::equal(wr.grad(), ref.grad)) << to_string(engine);
    // The replicated form in a world of one is the plain engine too.
    auto wr2 = w.clone().requires_grad_(true);
    auto rep = dist::dkm_cluster_replicated(wr2, c, o, comm);
    (rep.weight.to(at::kFloat) * g).sum().backward();
    dist::all_reduce_gradients({wr2}, *comm);
    EXPECT_TRUE(at::equal(rep.weight, ref.out));
    EXPECT_TRUE(at::equal(wr2.grad(), ref.grad));
  }
}

TEST(ShardedDKM, RefusesWhatItDoesNotShard) {
  auto comm = dist::world_of_one();
  const auto w = test::llm_like({32, 48}, 1, at::kFloat);
  const auto c = functional::init_centroids(w, DKMOptions(3).engine(Engine::kDense));
  test::expect_error([&] { dist::dkm_cluster_sharded(w, c, DKMOptions(3).engine(Engine::kDense), comm); },
                     {"dense engine is not sharded", "ShardedOffloader"});
  const auto og = DKMOptions(3).engine(Engine::kStreaming).granularity(Granularity::kPerGroupedChannel).group_size(8);
  test::expect_error([&] { dist::dkm_cluster_sharded(w, functional::init_centroids(w, og), og, comm); },
                     {"per-tensor LUT"});
  test::expect_error([&] { dist::dkm_cluster_sharded(w, c, DKMOptions(3).engine(Engine::kStreaming), nullptr); },
                     {"needs a communicator"});
  test::expect_error([&] { dist::ShardedOffloader(nullptr); }, {"needs a communicator"});
  test::expect_error([&] { dist::all_reduce_gradients({}, *comm, dist::GradientReduceOptions().bucket_bytes(0)); },
                     {"bucket_bytes must be > 0"});
}

TEST(ShardedOffloader, WorldOfOneIsBitwiseAndDeduplicates) {
  auto comm = dist::world_of_one();
  const auto w = test::llm_like({64, 64}, 2);
  const auto g = test::llm_like({64, 64}, 3);
  const auto o = DKMOptions(3).engine(Engine::kDense);
  const auto c = functional::init_centroids(w, o);
  const auto ref = test::run(w, c, g, o);
  for (bool to_host : {true, false}) {
    auto off =
        std::make_shared<dist::ShardedOffloader>(comm, dist::ShardedOffloadOptions().min_bytes(1024).to_host(to_host));
    test::Run got;
    {
      SavedTensorHooksGuard guard(off);
      got = test::run(w, c, g, o);
    }
    EXPECT_TRUE(at::equal(got.out, ref.out));
    EXPECT_TRUE(at::equal(got.grad, ref.grad));
    const auto s = off->stats();
    EXPECT_GT(s.storages_kept, 0) << s.to_string();
    EXPECT_GT(s.copies_avoided, 0) << s.to_string();  // DKM saves views of the same storages
    EXPECT_GT(s.restores, 0) << s.to_string();
    EXPECT_EQ(s.kept_bytes, 0) << s.to_string();  // everything released with the graph
    EXPECT_EQ(s.kept_bytes_peak > 0, true);
    if (to_host) EXPECT_GE(off->host_pool_peak_reserved_bytes(), s.kept_bytes_peak);
  }
}

TEST(ShardedOffloader, WorldOfOneUniquifyIsBitwiseAndKeepsLess) {
  auto comm = dist::world_of_one();
  const auto w = test::llm_like({256, 64}, 2, at::kBFloat16);
  const auto g = test::llm_like({256, 64}, 3, at::kBFloat16);
  const auto o = DKMOptions(3).engine(Engine::kDense).epsilon(0).max_iter(3);
  const auto c = functional::init_centroids(w, o);
  const auto ref = test::run(w, c, g, o);
  dist::ShardedOffloadStats kept[2];
  for (bool uniquify : {false, true}) {
    auto off = std::make_shared<dist::ShardedOffloader>(
        comm, dist::ShardedOffloadOptions().min_bytes(1024).uniquify(uniquify));
    test::Run got;
    {
      SavedTensorHooksGuard guard(off);
      got = test::run(w, c, g, o);
    }
    EXPECT_TRUE(at::equal(got.out, ref.out));
    EXPECT_TRUE(at::equal(got.centroids, ref.centroids));
    EXPECT_TRUE(at::equal(got.grad, ref.grad));
    kept[uniquify] = off->stats();
    EXPECT_EQ(kept[uniquify].kept_bytes, 0) << kept[uniquify].to_string();
  }
  EXPECT_EQ(kept[0].tensors_uniquified, 0);
  EXPECT_GT(kept[1].tensors_uniquified, 0) << kept[1].to_string();
  EXPECT_GT(kept[1].index_lists_shared, 0) << kept[1].to_string();
  EXPECT_LT(kept[1].kept_bytes_peak, kept[0].kept_bytes_peak) << kept[1].to_string() << " vs " << kept[0].to_string();
}

TEST(AllReduceGradients, WorldOfOneLeavesGradientsAlone) {
  auto comm = dist::world_of_one();
  auto a = at::ones({3}).requires_grad_(true), b = at::ones({2}, at::kDouble).requires_grad_(true);
  ((a * 2).sum() + (b * 3).sum()).backward();
  dist::all_reduce_gradients({a, b, at::ones({1})}, *comm, dist::GradientReduceOptions().bucket_bytes(4));
  EXPECT_TRUE(at::equal(a.grad(), at::full({3}, 2.0f)));
  EXPECT_TRUE(at::equal(b.grad(), at::full({2}, 3.0, at::kDouble)));
}

}  // namespace
}  // namespace edkm
