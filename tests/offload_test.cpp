// Tests of edkm/offload/saved_tensor_hooks.h and edkm/offload/offloader.h: C++ saved-tensor hooks (nesting,
// retain_graph, lifetime, errors, other threads) and the offloader (bitwise-identical gradients,
// de-dup by storage, one restore per storage, pooling, GPU peak memory).
#include <ATen/ATen.h>
#include <edkm/dkm/dkm.h>
#include <edkm/memory/memory.h>
#include <edkm/nn/activation_checkpoint.h>
#include <edkm/offload/offloader.h>
#include <edkm/offload/saved_tensor_hooks.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <optional>
#include <stdexcept>
#include <thread>

#include "offload/prefetch.h"
#include "offload/unique_rows.h"
#include "test_util.h"

#if defined(EDKM_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace {

using edkm::test::expect_error;

// Keeps the tensor; counts calls.
struct CountingHooks : edkm::SavedTensorHooks {
  std::atomic<int> packs{0}, unpacks{0};
  std::any pack(const at::Tensor& t) override {
    ++packs;
    return t;
  }
  at::Tensor unpack(const std::any& p) override {
    ++unpacks;
    return std::any_cast<at::Tensor>(p);
  }
};

// LibTorch starts an autograd engine's device threads (a ready queue per GPU, and the pool for
// deep re-entrant backwards) under one process-wide once-flag. edkm's engine replaces the default
// one when the first hooks guard is made, usually after backwards already ran on the base engine:
// it must still start its own, or every CUDA backward through it fails an internal assert (the
// first GPU run: every offloaded CUDA backward did). Run alone, this test reproduces that order.
TEST(SavedTensorHooks, EdkmEngineStartsItsOwnGpuQueuesAfterTheBaseEngineRan) {
  auto x = at::randn({8}).requires_grad_(true);
  (x * 2).sum().backward();  // on the base engine, unless an earlier test installed edkm's
  auto hooks = std::make_shared<CountingHooks>();
  auto y = at::randn({8}).requires_grad_(true);
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(hooks);
    loss = (y * y).sum();
  }
  loss.backward();
  EXPECT_GT(hooks->unpacks.load(), 0);
  const auto threads = edkm::detail::saved_tensor_hooks_engine_threads();
  EXPECT_TRUE(threads.reentrant_pool);
  int64_t gpus = 0;
#if defined(EDKM_WITH_CUDA)
  gpus = c10::cuda::device_count();
#endif
  EXPECT_EQ(threads.device_queues, gpus);
  if (gpus > 0) {  // a CUDA backward through edkm's engine
    auto z = at::randn({8}, at::kCUDA).requires_grad_(true);
    {
      edkm::SavedTensorHooksGuard guard(hooks);
      loss = (z * z).sum();
    }
    loss.backward();
    EXPECT_TRUE(at::allclose(z.grad(), 2 * z.detach()));
  }
}

// The prefetch heuristic's rules (offload/prefetch.h), alone.
TEST(OffloadPrefetch, DirectionIsLearnedFromRestoresAndClamped) {
  edkm::detail::PrefetchDirection d;
  EXPECT_TRUE(d.reverse());  // reverse pack order until the restores say otherwise
  d.observe(10);
  EXPECT_EQ(d.score(), -2);  // the first restore says nothing
  d.observe(10);             // the same storage again: no evidence
  EXPECT_EQ(d.score(), -2);
  for (int64_t seq : {11, 12, 13}) d.observe(seq);  // forward order
  EXPECT_EQ(d.score(), 1);
  EXPECT_FALSE(d.reverse());
  for (int64_t seq : {14, 15, 16, 17, 18}) d.observe(seq);
  EXPECT_EQ(d.score(), 4);  // clamped: a long forward run is undone by a few reverse restores
  for (int64_t seq : {17, 16, 15, 14}) d.observe(seq);
  EXPECT_EQ(d.score(), 0);
  EXPECT_TRUE(d.reverse());
  for (int64_t seq : {3, 2, 1, 0, 0}) d.observe(seq);  // the last one repeats: no evidence
  EXPECT_EQ(d.score(), -4);
}

TEST(OffloadPrefetch, CursorMovesOnlyToTheNextRestoreInSequence) {
  using edkm::detail::next_cursor;
  // No cursor yet, or a new backward (the cursor's storage not restored in it): start at the restore.
  EXPECT_EQ(next_cursor(-1, false, 7, -1, true), 7);
  EXPECT_EQ(next_cursor(9, false, 7, 5, true), 7);
  // Reverse walk from 9 whose next unrestored storage is 5: restoring 8, 7 or 6 (between) moves it.
  EXPECT_EQ(next_cursor(9, true, 8, 5, true), 8);
  EXPECT_EQ(next_cursor(9, true, 6, 5, true), 6);
  // The weight used again in a later DKM iteration (packed first, seq 1) does not drag it back;
  // neither does a storage behind the cursor.
  EXPECT_EQ(next_cursor(9, true, 1, 5, true), 9);
  EXPECT_EQ(next_cursor(9, true, 12, 5, true), 9);
  // Reverse walk with nothing left to prefetch (next -1): any earlier restore is adjacent.
  EXPECT_EQ(next_cursor(9, true, 2, -1, true), 2);
  // Forward walk from 3 whose next unrestored storage is 6.
  EXPECT_EQ(next_cursor(3, true, 4, 6, false), 4);
  EXPECT_EQ(next_cursor(3, true, 7, 6, false), 3);
  EXPECT_EQ(next_cursor(3, true, 2, 6, false), 3);
  EXPECT_EQ(next_cursor(3, true, 9, -1, false), 9);
}

edkm::OffloadOptions h2h() { return edkm::OffloadOptions().host_to_host(true).min_bytes(0); }

// Output and input gradient of dense DKM (default options) against upstream gradient `g`.
std::pair<at::Tensor, at::Tensor> dkm_step(const at::Tensor& w, const at::Tensor& c, const at::Tensor& g) {
  auto wr = w.clone().requires_grad_(true);
  auto out = edkm::functional::dkm_cluster(wr, c, edkm::DKMOptions(3).engine(edkm::Engine::kDense)).weight;
  out.backward(g);
  return {out.detach(), wr.grad()};
}

// A pre-LayerNorm transformer block: softmax attention (4 heads) and a GELU MLP.
struct Block {
  torch::nn::LayerNorm ln1{torch::nn::LayerNormOptions({64})}, ln2{torch::nn::LayerNormOptions({64})};
  torch::nn::Linear qkv{64, 192}, proj{64, 64}, up{64, 256}, down{256, 64};
  std::vector<at::Tensor> parameters() {
    std::vector<at::Tensor> p;
    for (auto* m :
         std::initializer_list<torch::nn::Module*>{ln1.get(), ln2.get(), qkv.get(), proj.get(), up.get(), down.get()})
      for (auto& t : m->parameters()) p.push_back(t);
    return p;
  }
  at::Tensor forward(const at::Tensor& x) {  // x: B x T x 64
    const int64_t B = x.size(0), T = x.size(1), H = 4, D = 16;
    auto parts = qkv(ln1(x)).view({B, T, 3, H, D}).permute({2, 0, 3, 1, 4});  // 3 x B x H x T x D
    auto q = parts[0], k = parts[1], v = parts[2];
    auto att = at::softmax(at::matmul(q, k.transpose(-2, -1)) / 4.0, -1);
    auto y = at::matmul(att, v).transpose(1, 2).reshape({B, T, 64});
    auto h = x + proj(y);
    return h + down(at::gelu(up(ln2(h))));
  }
};

std::vector<at::Tensor> block_grads(Block& block, const at::Tensor& x, const at::Tensor& g) {
  auto xr = x.clone().requires_grad_(true);
  auto params = block.parameters();
  params.push_back(xr);
  auto out = block.forward(xr);
  auto grads = torch::autograd::grad({out}, params, {g});
  grads.push_back(out.detach());
  return grads;
}

// ----------------------------------------------------------------------------------------------
// Hooks

TEST(SavedTensorHooks, EveryOpsSavedTensorGoesThroughPackAndUnpack) {
  auto hooks = std::make_shared<CountingHooks>();
  auto x = at::randn({8, 8}).requires_grad_(true);
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(hooks);
    EXPECT_EQ(edkm::current_saved_tensor_hooks(), hooks);
    loss = (at::sin(x) * x).sum();  // sin saves x; mul saves sin(x) and x
  }
  EXPECT_EQ(edkm::current_saved_tensor_hooks(), nullptr);
  EXPECT_EQ(hooks->packs.load(), 3);
  loss.backward();
  EXPECT_EQ(hooks->unpacks.load(), 3);
  EXPECT_TRUE(at::allclose(x.grad(), at::cos(x) * x + at::sin(x)));
}

TEST(SavedTensorHooks, NestedGuardsInnerWinsOuterRestoredNullDisables) {
  auto outer = std::make_shared<CountingHooks>(), inner = std::make_shared<CountingHooks>();
  auto x = at::randn({4}).requires_grad_(true);
  std::vector<at::Tensor> keep;
  {
    edkm::SavedTensorHooksGuard g1(outer);
    keep.push_back(at::sin(x));
    {
      edkm::SavedTensorHooksGuard g2(inner);
      EXPECT_EQ(edkm::current_saved_tensor_hooks(), inner);
      keep.push_back(at::sin(x));
      keep.push_back(at::cos(x));
      {
        edkm::SavedTensorHooksGuard none(nullptr);
        keep.push_back(at::sin(x));  // no hooks
      }
    }
    EXPECT_EQ(edkm::current_saved_tensor_hooks(), outer);
    keep.push_back(at::sin(x));
  }
  EXPECT_EQ(outer->packs.load(), 2);
  EXPECT_EQ(inner->packs.load(), 2);
  at::stack(keep).sum().backward();
  EXPECT_EQ(outer->unpacks.load(), 2);
  EXPECT_EQ(inner->unpacks.load(), 2);
  EXPECT_TRUE(at::allclose(x.grad(), 4 * at::cos(x) - at::sin(x)));
}

TEST(SavedTensorHooks, RetainGraphUnpacksTwiceWithTheSameGradients) {
  auto off = std::make_shared<edkm::Offloader>(h2h());
  auto x = at::randn({32, 32}).requires_grad_(true);
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(off);
    loss = at::matmul(at::tanh(x), x.t()).pow(2).sum();
  }
  const auto packed = off->stats().tensors_packed;
  auto g1 = torch::autograd::grad({loss}, {x}, {}, /*retain_graph=*/true)[0];
  EXPECT_EQ(off->stats().tensors_unpacked, packed);
  auto g2 = torch::autograd::grad({loss}, {x}, {}, /*retain_graph=*/false)[0];
  EXPECT_EQ(off->stats().tensors_unpacked, 2 * packed);
  EXPECT_TRUE(at::equal(g1, g2));
  auto ref = torch::autograd::grad({at::matmul(at::tanh(x), x.t()).pow(2).sum()}, {x})[0];
  EXPECT_TRUE(at::equal(g1, ref));
}

TEST(SavedTensorHooks, HookValuesAreFreedWithTheGraph) {
  const int64_t before = edkm::live_saved_tensor_hook_values();
  auto hooks = std::make_shared<CountingHooks>();
  std::weak_ptr<CountingHooks> weak = hooks;
  auto x = at::randn({16}).requires_grad_(true);
  {
    at::Tensor loss;
    {
      edkm::SavedTensorHooksGuard guard(std::move(hooks));
      loss = (at::exp(x) * at::sin(x)).sum();
    }
    EXPECT_EQ(edkm::live_saved_tensor_hook_values(), before + 4);
    EXPECT_FALSE(weak.expired());  // the graph keeps the hooks alive
  }                                // graph destroyed without backward
  EXPECT_EQ(edkm::live_saved_tensor_hook_values(), before);
  EXPECT_TRUE(weak.expired());

  // After a backward without retain_graph the saved values are freed too, and so is host memory.
  auto off = std::make_shared<edkm::Offloader>(h2h());
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(off);
    loss = (at::exp(x) * at::sin(x)).sum();
  }
  EXPECT_GT(off->stats().kept_bytes, 0);
  loss.backward();
  EXPECT_EQ(edkm::live_saved_tensor_hook_values(), before);
  EXPECT_EQ(off->stats().kept_bytes, 0);
  EXPECT_GT(off->stats().pool_cached_bytes, 0);
}

TEST(SavedTensorHooks, UnpackOnAnotherThreadUsesTheHooksCapturedAtPack) {
  auto off = std::make_shared<edkm::Offloader>(h2h());
  auto x = at::randn({64, 64}).requires_grad_(true);
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(off);
    loss = at::matmul(at::sigmoid(x), x).sum();
  }
  at::Tensor grad;
  std::thread worker([&] { grad = torch::autograd::grad({loss}, {x})[0]; });  // no guard on that thread
  worker.join();
  EXPECT_EQ(off->stats().tensors_unpacked, off->stats().tensors_packed);
  EXPECT_TRUE(at::equal(grad, torch::autograd::grad({at::matmul(at::sigmoid(x), x).sum()}, {x})[0]));
}

// y = x^3 with a hand-written backward that saves x through ctx->save_for_backward.
struct Cube : torch::autograd::Function<Cube> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x) {
    ctx->save_for_backward({x});
    return x * x * x;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    auto x = ctx->get_saved_variables()[0];
    return {3 * x * x * g[0]};
  }
};

TEST(SavedTensorHooks, CustomAutogradFunctionsSaveThroughTheHooks) {
  auto off = std::make_shared<edkm::Offloader>(h2h());
  auto x = at::randn({32, 32}).requires_grad_(true);
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(off);
    loss = Cube::apply(x * 1.0).sum();
  }
  EXPECT_EQ(off->stats().tensors_kept, 1);
  auto grad = torch::autograd::grad({loss}, {x})[0];
  EXPECT_EQ(off->stats().tensors_unpacked, 1);
  EXPECT_TRUE(at::equal(grad, 3 * x * x));
}

TEST(SavedTensorHooks, GuardsAreThreadLocal) {
  std::vector<std::shared_ptr<edkm::Offloader>> offs;
  std::vector<at::Tensor> grads(4);
  for (int i = 0; i < 4; ++i) offs.push_back(std::make_shared<edkm::Offloader>(h2h()));
  auto x = at::randn({48, 48}).requires_grad_(true);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      at::Tensor loss;
      {
        edkm::SavedTensorHooksGuard guard(offs[i]);
        loss = at::matmul(at::sin(x), x.t()).sum() * (1 << i);  // powers of two: exact scaling
      }
      grads[i] = torch::autograd::grad({loss}, {x})[0];
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(edkm::current_saved_tensor_hooks(), nullptr);  // this thread never had a guard
  auto ref = torch::autograd::grad({at::matmul(at::sin(x), x.t()).sum()}, {x})[0];
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(offs[i]->stats().tensors_packed, 3) << i;  // sin: x; mm: sin(x), x.t()
    EXPECT_EQ(offs[i]->stats().tensors_unpacked, 3) << i;
    EXPECT_TRUE(at::equal(grads[i], ref * (1 << i))) << i;
  }
}

// ----------------------------------------------------------------------------------------------
// Bad use

struct ThrowingHooks : edkm::SavedTensorHooks {
  bool throw_on_pack;
  explicit ThrowingHooks(bool on_pack) : throw_on_pack(on_pack) {}
  std::any pack(const at::Tensor& t) override {
    if (throw_on_pack) throw std::runtime_error("boom in pack");
    return t;
  }
  at::Tensor unpack(const std::any&) override { throw std::runtime_error("boom in unpack"); }
};

struct ThrowingAnIntHooks : edkm::SavedTensorHooks {  // not a std::exception
  std::any pack(const at::Tensor&) override { throw 7; }
  at::Tensor unpack(const std::any&) override { throw 7; }
};

struct WrongShapeHooks : edkm::SavedTensorHooks {
  std::any pack(const at::Tensor& t) override { return t; }
  at::Tensor unpack(const std::any& p) override { return std::any_cast<at::Tensor>(p).flatten().narrow(0, 0, 1); }
};

TEST(SavedTensorHooks, ThrowingOrWrongHooksGiveClearErrors) {
  const int64_t before = edkm::live_saved_tensor_hook_values();
  auto x = at::randn({4, 4}).requires_grad_(true);
  {
    edkm::SavedTensorHooksGuard guard(std::make_shared<ThrowingHooks>(true));
    expect_error([&] { (void)at::sin(x); }, {"pack hook failed", "boom in pack"});
  }
  {
    edkm::SavedTensorHooksGuard guard(std::make_shared<ThrowingAnIntHooks>());
    expect_error([&] { (void)at::sin(x); }, {"pack hook failed", "not a std::exception"});
  }
  EXPECT_EQ(edkm::live_saved_tensor_hook_values(), before);
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(std::make_shared<ThrowingHooks>(false));
    loss = at::sin(x).sum();
  }
  expect_error([&] { loss.backward(); }, {"unpack hook failed", "boom in unpack"});
  {
    edkm::SavedTensorHooksGuard guard(std::make_shared<WrongShapeHooks>());
    loss = at::sin(x).sum();
  }
  expect_error([&] { loss.backward(); }, {"unpack hook returned", "must match"});
  loss = at::sin(x).sum();  // no hooks: ordinary autograd still works
  loss.backward();
  EXPECT_TRUE(at::allclose(x.grad(), at::cos(x)));
}

TEST(Offloader, BadUseGivesClearErrors) {
  auto off = std::make_shared<edkm::Offloader>(h2h());
  auto x = at::randn({16, 16}).requires_grad_(true);
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(off);
    loss = at::sin(x).sum();
  }
  loss.backward();
  // The graph freed its saved tensors (and their host copies): a second backward is refused.
  expect_error([&] { loss.backward(); }, {"backward through the graph a second time"});
  expect_error([&] { off->unpack(std::any()); }, {"not packed by an edkm::Offloader"});
  expect_error([&] { off->unpack(std::any(x)); }, {"not packed by an edkm::Offloader"});
  expect_error([&] { edkm::Offloader(edkm::OffloadOptions().min_bytes(-1)); }, {"min_bytes"});
  expect_error([&] { edkm::Offloader(edkm::OffloadOptions().prefetch(-1)); }, {"prefetch must be >= 0"});
  expect_error([&] { edkm::Offloader(edkm::OffloadOptions().prefetch_max_bytes(-2)); }, {"prefetch_max_bytes"});
  expect_error([&] { edkm::Offloader(edkm::OffloadOptions().pool_max_cached_bytes(-1)); }, {"pool_max_cached_bytes"});
  expect_error([&] { edkm::OffloadGuard(std::shared_ptr<edkm::Offloader>()); }, {"null offloader"});
}

// ----------------------------------------------------------------------------------------------
// Offloader

TEST(Offloader, DenseDkmGradientsAreBitwiseIdentical) {
  auto w = edkm::test::llm_like({256, 128}, 1);
  auto c = edkm::functional::init_centroids(w, edkm::DKMOptions(3).engine(edkm::Engine::kDense));
  auto g = edkm::test::llm_like({256, 128}, 2);
  auto [out_ref, grad_ref] = dkm_step(w, c, g);
  auto counting = std::make_shared<CountingHooks>();  // what autograd saves and unpacks in one step
  {
    edkm::SavedTensorHooksGuard guard(counting);
    auto [out, grad] = dkm_step(w, c, g);
    EXPECT_TRUE(at::equal(grad, grad_ref));
  }
  auto off = std::make_shared<edkm::Offloader>(h2h().min_bytes(4096));
  for (int step = 0; step < 2; ++step) {  // the second step reuses the pool's buffers
    edkm::SavedTensorHooksGuard guard(off);
    auto [out, grad] = dkm_step(w, c, g);
    EXPECT_TRUE(at::equal(out, out_ref));
    EXPECT_TRUE(at::equal(grad, grad_ref));
  }
  const auto s = off->stats();
  EXPECT_GT(s.tensors_kept, 0) << s.to_string();
  EXPECT_GE(s.bytes_stored, 2 * 256 * 128 * 8 * 4) << s.to_string();  // at least one N x K fp32 per step
  EXPECT_EQ(s.tensors_packed, 2 * counting->packs.load()) << s.to_string();
  EXPECT_EQ(s.tensors_unpacked, 2 * counting->unpacks.load()) << s.to_string();
  EXPECT_GT(s.storages_kept, 0) << s.to_string();
  EXPECT_LT(s.storages_kept, s.tensors_kept) << s.to_string();  // de-dup of views
  EXPECT_EQ(s.copies_avoided, s.tensors_kept - s.storages_kept) << s.to_string();
  EXPECT_GT(s.pool_hits, 0) << s.to_string();
  EXPECT_EQ(s.kept_bytes, 0) << s.to_string();
  EXPECT_LE(s.bytes_restored, s.bytes_stored) << s.to_string();  // at most one restore per storage
}

TEST(Offloader, TransformerBlockGradientsAreBitwiseIdentical) {
  torch::manual_seed(0);
  Block block;
  auto x = at::randn({2, 16, 64}), g = at::randn({2, 16, 64});
  auto ref = block_grads(block, x, g);
  for (const int64_t prefetch : {0, 1, 2}) {
    for (const bool uniquify : {false, true}) {
      auto off = std::make_shared<edkm::Offloader>(h2h().prefetch(prefetch).uniquify(uniquify));
      std::vector<at::Tensor> got;
      {
        edkm::OffloadGuard guard(off);
        got = block_grads(block, x, g);
      }
      ASSERT_EQ(got.size(), ref.size());
      for (size_t i = 0; i < ref.size(); ++i) EXPECT_TRUE(at::equal(got[i], ref[i])) << "gradient " << i;
      const auto s = off->stats();
      EXPECT_EQ(s.tensors_kept, s.tensors_packed) << s.to_string();
      EXPECT_GT(s.copies_avoided, 0) << s.to_string();  // q, k, v are views of one qkv output
      EXPECT_EQ(s.kept_bytes, 0) << s.to_string();
      EXPECT_EQ(s.prefetch_hits > 0, prefetch > 0) << s.to_string();
      EXPECT_EQ(s.tensors_uniquified, 0) << s.to_string();  // activations of random inputs: no repeated rows
    }
  }
}

// Activation checkpointing composes with the offloader: the recompute in backward saves its
// tensors through the same hooks, and the gradients stay bitwise those of the plain block.
TEST(Offloader, CheckpointedBlockUnderTheOffloaderKeepsItsGradients) {
  torch::manual_seed(1);
  Block block;
  auto x = at::randn({2, 16, 64}), g = at::randn({2, 16, 64});
  auto ref = block_grads(block, x, g);
  auto run = [&] {  // block_grads' layout: parameter gradients, input gradient, output
    auto xr = x.clone().requires_grad_(true);
    auto params = block.parameters();
    auto out = edkm::functional::checkpoint([&](const at::Tensor& t) { return block.forward(t); }, xr, params);
    params.push_back(xr);
    auto grads = torch::autograd::grad({out}, params, {g});
    grads.push_back(out.detach());
    return grads;
  };
  auto off = std::make_shared<edkm::Offloader>(h2h());
  std::vector<at::Tensor> got;
  {
    edkm::OffloadGuard guard(off);
    got = run();
  }
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_TRUE(at::equal(got[i], ref[i])) << "gradient " << i;
  const auto s = off->stats();
  EXPECT_GT(s.tensors_kept, 0) << s.to_string();  // the recompute's saved tensors went through the hooks
  EXPECT_EQ(s.kept_bytes, 0) << s.to_string();
}

TEST(Offloader, ViewsOfAnOffloadedStorageAreNotCopiedAgain) {
  auto x = at::randn({64, 64}).requires_grad_(true);
  auto forward = [&] {
    auto y = x * 2;  // saves nothing (scalar); y's storage is saved below through four views
    return at::sin(y).sum() + at::sin(y.t()).sum() + at::sin(y.view({4096})).sum() + at::sin(y.narrow(0, 8, 32)).sum();
  };
  auto ref = torch::autograd::grad({forward()}, {x})[0];
  auto off = std::make_shared<edkm::Offloader>(h2h());
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(off);
    loss = forward();
  }
  auto s = off->stats();
  EXPECT_EQ(s.tensors_kept, 4) << s.to_string();
  EXPECT_EQ(s.storages_kept, 1) << s.to_string();
  EXPECT_EQ(s.bytes_stored, 64 * 64 * 4) << s.to_string();
  EXPECT_EQ(s.copies_avoided, 3) << s.to_string();
  EXPECT_EQ(s.bytes_not_copied, 3 * 64 * 64 * 4) << s.to_string();
  EXPECT_GE(s.kept_bytes, 64 * 64 * 4) << s.to_string();  // one pool buffer (size class: <= 25% more)
  EXPECT_LE(s.kept_bytes, 64 * 64 * 5) << s.to_string();
  EXPECT_TRUE(at::equal(torch::autograd::grad({loss}, {x})[0], ref));
  // Backward restored the storage once; the four views shared it.
  s = off->stats();
  EXPECT_EQ(s.bytes_restored, 64 * 64 * 4) << s.to_string();
  EXPECT_EQ(s.restores_shared, 3) << s.to_string();
}

TEST(Offloader, WithoutDedupEveryViewIsCopied) {
  auto x = at::randn({64, 64}).requires_grad_(true);
  auto off = std::make_shared<edkm::Offloader>(h2h().dedup(false));
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(off);
    auto y = x * 2;
    loss = at::sin(y).sum() + at::sin(y.t()).sum() + at::sin(y.narrow(0, 8, 32)).sum();
  }
  const auto s = off->stats();
  EXPECT_EQ(s.storages_kept, 3) << s.to_string();
  EXPECT_EQ(s.copies_avoided, 0) << s.to_string();
  EXPECT_EQ(s.bytes_stored, 3 * 64 * 64 * 4) << s.to_string();
  auto grad = torch::autograd::grad({loss}, {x})[0];
  auto y = x * 2;
  auto ref =
      torch::autograd::grad({at::sin(y).sum() + at::sin(y.t()).sum() + at::sin(y.narrow(0, 8, 32)).sum()}, {x})[0];
  EXPECT_TRUE(at::equal(grad, ref));
}

TEST(Offloader, OneRestoreSharedByTheViewsOfAStorage) {
  auto x = at::randn({32, 48}).requires_grad_(true);
  auto ref = torch::autograd::grad({at::mm(x * 3, (x * 3).t()).sum()}, {x})[0];
  auto off = std::make_shared<edkm::Offloader>(h2h());
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(off);
    auto y = x * 3;
    loss = at::mm(y, y.t()).sum();  // MmBackward saves y and y.t(): one storage
  }
  auto grad = torch::autograd::grad({loss}, {x})[0];
  const auto s = off->stats();
  EXPECT_EQ(s.storages_kept, 1) << s.to_string();
  EXPECT_EQ(s.copies_avoided, 1) << s.to_string();
  EXPECT_EQ(s.bytes_restored, 32 * 48 * 4) << s.to_string();
  EXPECT_EQ(s.restores_shared, 1) << s.to_string();
  EXPECT_EQ(s.restores, 1) << s.to_string();
  EXPECT_TRUE(at::equal(grad, ref));
  // The same figures as JSON (every counter by name).
  const auto j = nlohmann::json::parse(s.to_json());
  EXPECT_EQ(j.at("storages_kept").get<int64_t>(), 1);
  EXPECT_EQ(j.at("bytes_restored").get<int64_t>(), 32 * 48 * 4);
  EXPECT_EQ(j.at("kept_bytes_peak").get<int64_t>(), s.kept_bytes_peak);
  EXPECT_EQ(j.at("pool").at("misses").get<int64_t>(), s.pool.misses);
  EXPECT_EQ(j.size(), 24u) << j.dump();
}

TEST(Offloader, AValueUnpacksOnlyThroughTheStoreThatPackedIt) {
  auto a = std::make_shared<edkm::Offloader>(h2h()), b = std::make_shared<edkm::Offloader>(h2h());
  const auto x = at::randn({64, 64});
  const auto packed = a->pack(x);
  expect_error([&] { b->unpack(packed); }, {"packed by another edkm::Offloader"});
  EXPECT_TRUE(at::equal(a->unpack(packed), x));
  EXPECT_EQ(b->stats().tensors_packed, 0);
}

TEST(Offloader, InPlaceWriteAfterSaveForcesANewCopyAndBackwardRefusesIt) {
  auto x = at::randn({32, 32}).requires_grad_(true);
  // Plain autograd refuses a saved tensor written in place before backward.
  auto plain = [&] {
    auto y = x * 1.5;
    auto a = at::sin(y).sum();  // saves y (version 0)
    y.mul_(2);                  // new contents, same storage
    return a + at::sin(y.t()).sum();
  };
  expect_error([&] { plain().backward(); }, {"modified by an inplace operation"});
  auto off = std::make_shared<edkm::Offloader>(h2h());
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(off);
    loss = plain();
  }
  const auto s = off->stats();
  EXPECT_EQ(s.storages_kept, 2) << s.to_string();  // the second save is not the first's copy
  EXPECT_EQ(s.copies_avoided, 0) << s.to_string();
  // LibTorch skips that check under saved-tensor hooks; the Offloader makes it, for a copied
  // tensor and for one it keeps as it is (below min_bytes), whose gradient was silently wrong.
  expect_error([&] { loss.backward(); }, {"modified by an inplace operation", "version 1", "Offloader"});
  for (int64_t min_bytes : {int64_t{1}, int64_t{1} << 30}) {
    auto b = at::randn({8}).requires_grad_(true);
    auto c = b * 1.0;
    at::Tensor l;
    {
      edkm::SavedTensorHooksGuard guard(std::make_shared<edkm::Offloader>(h2h().min_bytes(min_bytes)));
      l = at::sin(c).sum();
    }
    c.add_(1);
    expect_error([&] { l.backward(); }, {"modified by an inplace operation"});
  }
}

TEST(Offloader, SmallTensorsAndCpuTensorsWithoutHostToHostAreKept) {
  auto x = at::randn({16, 16}).requires_grad_(true);
  auto off = std::make_shared<edkm::Offloader>(edkm::OffloadOptions());  // host_to_host off, 1 MiB threshold
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(off);
    loss = at::sin(x).sum();
  }
  auto small = std::make_shared<edkm::Offloader>(h2h().min_bytes(16 * 16 * 4 + 1));
  at::Tensor loss2;
  {
    edkm::SavedTensorHooksGuard guard(small);
    loss2 = at::sin(x).sum();
  }
  EXPECT_EQ(off->stats().tensors_packed, 1);
  EXPECT_EQ(off->stats().tensors_kept, 0);
  EXPECT_EQ(small->stats().tensors_kept, 0);
  EXPECT_TRUE(at::equal(torch::autograd::grad({loss}, {x})[0], at::cos(x)));
  EXPECT_TRUE(at::equal(torch::autograd::grad({loss2}, {x})[0], at::cos(x)));
}

// ----------------------------------------------------------------------------------------------
// Prefetch, uniquify, shared pool

// Dense DKM (fp32 and bf16 weights) with every combination of prefetch and uniquify: output and
// weight gradient bitwise those without the offloader; prefetches hit; nothing is left behind.
TEST(Offloader, PrefetchAndUniquifyKeepDenseDkmBitwise) {
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    auto w = edkm::test::llm_like({512, 128}, 5).to(dtype);
    auto c = edkm::functional::init_centroids(w, edkm::DKMOptions(3).engine(edkm::Engine::kDense));
    auto g = edkm::test::llm_like({512, 128}, 6).to(dtype);
    auto [out_ref, grad_ref] = dkm_step(w, c, g);
    for (const int64_t prefetch : {0, 1, 3}) {
      for (const bool uniquify : {false, true}) {
        const std::string what =
            std::string(c10::toString(dtype)) + " prefetch " + std::to_string(prefetch) + (uniquify ? " uniquify" : "");
        auto off = std::make_shared<edkm::Offloader>(h2h().min_bytes(4096).prefetch(prefetch).uniquify(uniquify));
        for (int step = 0; step < 2; ++step) {
          edkm::SavedTensorHooksGuard guard(off);
          auto [out, grad] = dkm_step(w, c, g);
          EXPECT_TRUE(at::equal(out, out_ref)) << what;
          EXPECT_TRUE(at::equal(grad, grad_ref)) << what;
        }
        auto s = off->stats();
        EXPECT_EQ(s.kept_bytes, 0) << what << ": " << s.to_string();
        EXPECT_EQ(s.pool.in_use_bytes, 0) << what << ": " << s.to_string();
        {  // a graph freed without backward leaves nothing either
          edkm::SavedTensorHooksGuard guard(off);
          auto wr = w.clone().requires_grad_(true);
          (void)edkm::functional::dkm_cluster(wr, c, edkm::DKMOptions(3).engine(edkm::Engine::kDense)).weight;
        }
        EXPECT_EQ(off->stats().kept_bytes, 0) << what;
        EXPECT_EQ(off->stats().pool.in_use_bytes, 0) << what;
        s = off->stats();
        if (prefetch == 0) {
          EXPECT_EQ(s.prefetches, 0) << what;
        } else {
          // Backward of DKM unpacks in reverse pack order but for the weight, used by every
          // iteration: most restores are prefetched.
          EXPECT_GE(s.prefetch_hits, s.storages_kept / 2) << what << ": " << s.to_string();
          EXPECT_EQ(s.prefetches, s.prefetch_hits + s.prefetch_wasted) << what << ": " << s.to_string();
          EXPECT_LE(s.prefetch_wasted, 2 * prefetch) << what << ": " << s.to_string();  // per step, at the end
        }
        if (!uniquify || dtype == at::kFloat) {
          // fp32 weights: every row of the N x K maps is different; nothing is uniquified.
          EXPECT_EQ(s.tensors_uniquified, 0) << what << ": " << s.to_string();
        } else {
          // bf16: the N x K maps (distances, attention) are stored as distinct rows + one index list.
          EXPECT_GE(s.tensors_uniquified, 2 * 4) << what << ": " << s.to_string();
          EXPECT_GT(s.index_lists_shared, 0) << what << ": " << s.to_string();
          EXPECT_GE(s.uniquify_bytes_before, 8 * s.uniquify_bytes_after) << what << ": " << s.to_string();
        }
      }
    }
  }
}

// R x K maps that are functions of a column of R values with U distinct ones: stored as U rows and
// one index list shared by both saved storages; exact byte counts; restored bitwise.
TEST(Offloader, UniquifyStoresDistinctRowsAndSharesTheIndexList) {
  const int64_t R = 4 * 65536 + 1000, K = 8;  // more rows than the first sample: the later ones add values
  auto v = at::randint(0, 300, {R, 1}, at::TensorOptions().dtype(at::kLong));
  v.narrow(0, R - 50, 50).copy_(at::arange(1000, 1050).view({50, 1}));  // 50 values seen only at the end
  auto x = (v.to(at::kFloat) * 0.01).requires_grad_(true);
  auto c = at::linspace(-1, 3, K).view({1, K});
  const int64_t U = std::get<0>(at::_unique2(v)).numel();
  ASSERT_EQ(U, 350);
  auto forward = [&] {
    auto d = x - c;                          // R x K, rows repeat with v
    return (at::exp(d) + at::sin(d)).sum();  // exp saves its result, sin saves d
  };
  auto ref = torch::autograd::grad({forward()}, {x})[0];
  auto off = std::make_shared<edkm::Offloader>(h2h().min_bytes(1 << 20).uniquify(true));
  edkm::MemoryMeter meter;
  at::Tensor loss;
  {
    edkm::SavedTensorHooksGuard guard(off);
    loss = forward();
  }
  auto s = off->stats();
  EXPECT_EQ(s.tensors_uniquified, 2) << s.to_string();
  EXPECT_EQ(s.index_lists_shared, 1) << s.to_string();
  EXPECT_EQ(s.uniquify_bytes_before, 2 * R * K * 4) << s.to_string();
  EXPECT_EQ(s.uniquify_bytes_after, 2 * U * K * 4 + R * 2) << s.to_string();  // two tables, one index
  EXPECT_EQ(s.bytes_stored, s.uniquify_bytes_after) << s.to_string();
  EXPECT_TRUE(at::equal(torch::autograd::grad({loss}, {x})[0], ref));
  s = off->stats();
  EXPECT_EQ(s.bytes_restored, 2 * (U * K * 4 + R * 2)) << s.to_string();
  EXPECT_EQ(s.kept_bytes, 0) << s.to_string();
  loss = at::Tensor();
  EXPECT_EQ(meter.report().cpu.current_delta(), 0);  // no restored copy or uniquify temporary left
}

TEST(Offloader, UniquifyKeepsPlainCopiesWhenRowsDoNotRepeatEnough) {
  auto run = [](const at::Tensor& x, int64_t min_bytes) {
    auto xr = x.clone().requires_grad_(true);
    auto off = std::make_shared<edkm::Offloader>(h2h().min_bytes(min_bytes).uniquify(true));
    at::Tensor loss;
    {
      edkm::SavedTensorHooksGuard guard(off);
      loss = at::sin(xr * 1.0).sum();  // sin saves its input
    }
    auto grad = torch::autograd::grad({loss}, {xr})[0];
    EXPECT_TRUE(at::equal(grad, at::cos(x)));
    return off->stats();
  };
  // All rows distinct.
  auto s = run(at::randn({100000, 8}), 0);
  EXPECT_EQ(s.storages_kept, 1) << s.to_string();
  EXPECT_EQ(s.tensors_uniquified, 0) << s.to_string();
  // 70,000 distinct rows of 64 values: more than a 16-bit index addresses.
  auto many = at::arange(70000, at::kFloat).repeat({3}).view({-1, 1}).expand({-1, 64}).contiguous();
  s = run(many, 0);
  EXPECT_EQ(s.tensors_uniquified, 0) << s.to_string();
  // Repeated rows, but below min_bytes: kept as it is.
  auto few = at::ones({1000, 8});
  s = run(few, 1000 * 8 * 4 + 1);
  EXPECT_EQ(s.tensors_kept, 0) << s.to_string();
  EXPECT_EQ(s.tensors_uniquified, 0) << s.to_string();
  // Repeated rows of 16 values, 40 distinct ones over 4,000 rows: saving 8x, uniquified.
  auto rep = at::arange(40, at::kFloat).repeat({100}).view({-1, 1}).expand({-1, 16}).contiguous();
  s = run(rep, 0);
  EXPECT_EQ(s.tensors_uniquified, 1) << s.to_string();
  EXPECT_EQ(s.uniquify_bytes_after, 40 * 16 * 4 + 4000 * 2) << s.to_string();
}

// Two different rows with the same 64-bit hash (constructed from the hash's streaming form):
// the verification catches it and the plain copy is kept; without the collision the rows are found.
TEST(Offloader, UniquifyFallsBackOnAHashCollision) {
  auto h1 = [](int64_t w) { return edkm::detail::hash_rows(at::full({1, 1}, w, at::kLong)).item<int64_t>(); };
  const int64_t a0 = 12345, a1 = -987654321, b0 = 777;
  const int64_t b1 = h1(a0) ^ a1 ^ h1(b0);  // F(F(s ^ a0) ^ a1) = F(F(s ^ b0) ^ b1)
  auto rows = at::tensor({a0, a1, b0, b1}, at::kLong).view({2, 2});
  auto h = edkm::detail::hash_rows(rows);
  ASSERT_EQ(h[0].item<int64_t>(), h[1].item<int64_t>());  // a collision indeed
  auto data = rows.repeat({50000, 1});                    // 100,000 rows of 16 bytes, 2 distinct
  EXPECT_FALSE(edkm::detail::find_unique_rows(data.view(at::kByte).view({-1}), 16).has_value());
  auto fine = at::tensor({a0, a1, b0, b1 + 1}, at::kLong).view({2, 2}).repeat({50000, 1});
  auto u = edkm::detail::find_unique_rows(fine.view(at::kByte).view({-1}), 16);
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->unique, 2);
  EXPECT_TRUE(at::equal(edkm::detail::expand_unique_rows(u->table, u->index, 16), fine.view(at::kByte).view({-1})));
}

// Unpacks in pack order (not the usual reverse): the offloader learns the direction; prefetched
// copies that are never used are freed with their saved values; the byte bound holds.
TEST(Offloader, PrefetchFollowsTheUnpackOrderAndFreesUnusedCopies) {
  auto off = std::make_shared<edkm::Offloader>(h2h().prefetch(1));
  std::vector<at::Tensor> ts;
  std::vector<std::any> packed;
  for (int i = 0; i < 8; ++i) ts.push_back(at::randn({64, 64}));
  edkm::MemoryMeter meter;
  for (auto& t : ts) packed.push_back(off->pack(t));
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(at::equal(off->unpack(packed[i]), ts[i])) << i;
  auto s = off->stats();
  EXPECT_GE(s.prefetch_hits, 4) << s.to_string();  // after a few votes the direction is forward
  EXPECT_EQ(s.bytes_restored, (8 + s.prefetch_wasted) * 64 * 64 * 4) << s.to_string();
  packed.clear();
  s = off->stats();
  EXPECT_EQ(s.prefetches, s.prefetch_hits + s.prefetch_wasted) << s.to_string();
  EXPECT_EQ(s.kept_bytes, 0) << s.to_string();
  EXPECT_EQ(meter.report().cpu.current_delta(), 0);  // no restored or prefetched copy left

  // A graph freed without backward after a partial unpack: its prefetched copy is freed, counted wasted.
  auto off2 = std::make_shared<edkm::Offloader>(h2h().prefetch(2));
  for (auto& t : ts) packed.push_back(off2->pack(t));
  (void)off2->unpack(packed.back());  // prefetches the two packed before it
  EXPECT_EQ(off2->stats().prefetches, 2);
  packed.clear();
  s = off2->stats();
  EXPECT_EQ(s.prefetch_wasted, 2) << s.to_string();
  EXPECT_EQ(s.kept_bytes, 0) << s.to_string();
  EXPECT_EQ(meter.report().cpu.current_delta(), 0);

  // A byte bound below one storage: no prefetch at all.
  auto off3 = std::make_shared<edkm::Offloader>(h2h().prefetch(4).prefetch_max_bytes(64 * 64 * 4 - 1));
  for (auto& t : ts) packed.push_back(off3->pack(t));
  for (int i = 7; i >= 0; --i) EXPECT_TRUE(at::equal(off3->unpack(packed[i]), ts[i])) << i;
  EXPECT_EQ(off3->stats().prefetches, 0);
  packed.clear();
}

// A prefetched storage is restored once: its views share the prefetched copy.
TEST(Offloader, PrefetchedStorageIsSharedByItsViews) {
  auto off = std::make_shared<edkm::Offloader>(h2h().prefetch(1));
  auto a = at::randn({32, 32}), b = at::randn({32, 32});
  auto pa = off->pack(a), pb = off->pack(b), pbt = off->pack(b.t());
  auto ub = off->unpack(pb);  // prefetches a
  auto ua = off->unpack(pa);
  auto ubt = off->unpack(pbt);
  const auto s = off->stats();
  EXPECT_EQ(s.prefetch_hits, 1) << s.to_string();
  EXPECT_EQ(s.restores_shared, 1) << s.to_string();
  EXPECT_EQ(s.bytes_restored, 2 * 32 * 32 * 4) << s.to_string();
  EXPECT_EQ(ubt.data_ptr(), ub.data_ptr());
  EXPECT_TRUE(at::equal(ua, a) && at::equal(ub, b) && at::equal(ubt, b.t()));
}

// Two offloaders on one pool: the second reuses the blocks the first gave back.
TEST(Offloader, TwoOffloadersShareAHostMemoryPool) {
  auto pool = std::make_shared<edkm::HostMemoryPool>(edkm::HostMemoryPoolOptions().pinned(false));
  auto first = std::make_shared<edkm::Offloader>(h2h().pool(pool));
  auto second = std::make_shared<edkm::Offloader>(h2h().pool(pool));
  EXPECT_EQ(first->pool(), pool);
  EXPECT_EQ(second->pool(), pool);
  auto x = at::randn({128, 128}).requires_grad_(true);
  auto step = [&](const std::shared_ptr<edkm::Offloader>& off) {
    at::Tensor loss;
    {
      edkm::SavedTensorHooksGuard guard(off);
      loss = at::matmul(at::tanh(x), x.t()).sum();
    }
    return torch::autograd::grad({loss}, {x})[0];
  };
  auto g1 = step(first), g2 = step(second);
  EXPECT_TRUE(at::equal(g1, g2));
  const auto s1 = first->stats(), s2 = second->stats();
  EXPECT_EQ(s1.pool_hits, 0) << s1.to_string();
  EXPECT_GT(s1.pool_misses, 0) << s1.to_string();
  EXPECT_EQ(s2.pool_misses, 0) << s2.to_string();  // every block came from the first offloader's
  EXPECT_EQ(s2.pool_hits, s1.pool_misses) << s2.to_string();
  EXPECT_EQ(s2.pool.hits, pool->stats().hits);
  EXPECT_EQ(pool->stats().in_use_bytes, 0);
  EXPECT_GT(s2.pool_cached_bytes, 0);
  second->empty_pool();
  EXPECT_EQ(pool->stats().cached_bytes, 0);
  // The owned pool follows pin_memory and pool_max_cached_bytes.
  auto own = std::make_shared<edkm::Offloader>(h2h().pin_memory(false).pool_max_cached_bytes(1234));
  EXPECT_FALSE(own->pool()->pinned());
  EXPECT_EQ(own->pool()->options().max_cached_bytes(), 1234);
}

// CUDA: pinned pool, copies and prefetches on side streams, uniquify on the device; gradients
// bitwise those without the offloader, prefetches hit, bf16 maps uniquified, nothing left behind.
TEST(Offloader, GpuPrefetchAndUniquifyKeepDenseDkmBitwise) {
  EDKM_SKIP_WITHOUT_GPU();
#if defined(EDKM_WITH_CUDA)
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    auto w = edkm::test::llm_like({1024, 512}, 7).to(dtype).cuda();
    auto c = edkm::functional::init_centroids(w, edkm::DKMOptions(3).engine(edkm::Engine::kDense));
    auto g = edkm::test::llm_like({1024, 512}, 8).to(dtype).cuda();
    auto [out_ref, grad_ref] = dkm_step(w, c, g);
    auto off = std::make_shared<edkm::Offloader>(edkm::OffloadOptions().min_bytes(4096).prefetch(2).uniquify(true));
    EXPECT_TRUE(off->pool()->pinned());
    for (int step = 0; step < 2; ++step) {
      edkm::SavedTensorHooksGuard guard(off);
      auto [out, grad] = dkm_step(w, c, g);
      EXPECT_TRUE(at::equal(out, out_ref));
      EXPECT_TRUE(at::equal(grad, grad_ref));
    }
    c10::cuda::device_synchronize();
    const auto s = off->stats();
    EXPECT_GT(s.prefetch_hits, 0) << s.to_string();
    EXPECT_EQ(s.kept_bytes, 0) << s.to_string();
    EXPECT_EQ(s.pool.in_use_bytes, 0) << s.to_string();
    if (dtype == at::kBFloat16) {
      EXPECT_GT(s.tensors_uniquified, 0) << s.to_string();
      EXPECT_GE(s.uniquify_bytes_before, 8 * s.uniquify_bytes_after) << s.to_string();
    } else {
      EXPECT_EQ(s.tensors_uniquified, 0) << s.to_string();
    }
  }
#endif
}

TEST(Offloader, GpuPeakMemoryOfDenseDkmDrops) {
  EDKM_SKIP_WITHOUT_GPU();
#if defined(EDKM_WITH_CUDA)
  auto w = edkm::test::llm_like({1024, 1024}, 3).cuda();
  auto c = edkm::functional::init_centroids(w, edkm::DKMOptions(3).engine(edkm::Engine::kDense));
  auto g = edkm::test::llm_like({1024, 1024}, 4).cuda();
  auto measure = [&](bool offload, at::Tensor* grad, edkm::OffloadStats* stats) {
    auto off = std::make_shared<edkm::Offloader>();
    c10::cuda::device_synchronize();
    edkm::MemoryMeter meter;
    {
      std::optional<edkm::SavedTensorHooksGuard> guard;
      if (offload) guard.emplace(off);
      auto wr = w.clone().requires_grad_(true);
      auto out = edkm::functional::dkm_cluster(wr, c, edkm::DKMOptions(3).engine(edkm::Engine::kDense)).weight;
      guard.reset();
      out.backward(g);
      *grad = wr.grad();
    }
    c10::cuda::device_synchronize();
    *stats = off->stats();
    return meter.report().cuda.peak_delta();
  };
  at::Tensor g_plain, g_off;
  edkm::OffloadStats s_plain, s_off;
  const int64_t plain = measure(false, &g_plain, &s_plain);
  const int64_t offloaded = measure(true, &g_off, &s_off);
  EXPECT_TRUE(at::equal(g_plain, g_off));
  EXPECT_GT(s_off.bytes_stored, 0) << s_off.to_string();
  EXPECT_LT(offloaded, plain) << s_off.to_string();
#endif
}

}  // namespace
