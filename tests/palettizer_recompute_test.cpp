// edkm/palettizer/palettizer.h with activation recompute: checkpointed models get bitwise the gradients of
// the plain model whether backward runs inside or after the clustered() scope (edkm::Checkpoint,
// functional::checkpoint, nested, with the Offloader's hooks); the DKM state is a module; bad
// uses (two palettizers, removed layers, replaced weights, model->to() in a scope) are refused by
// name; host syncs per DKM step.
#include <ATen/record_function.h>
#include <edkm/nn/activation_checkpoint.h>
#include <edkm/offload/offloader.h>
#include <edkm/offload/saved_tensor_hooks.h>
#include <edkm/palettizer/palettizer.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/sgd.h>
#include <torch/serialize.h>

#include <atomic>
#include <map>

#include "temp_dir.h"
#include "test_util.h"

namespace edkm {
namespace {

enum class Wrap { kPlain, kCheckpointModule, kFunctional, kNested };
const char* wrap_name(Wrap w) {
  switch (w) {
    case Wrap::kPlain:
      return "plain";
    case Wrap::kCheckpointModule:
      return "edkm::Checkpoint";
    case Wrap::kFunctional:
      return "functional::checkpoint";
    case Wrap::kNested:
      return "nested";
  }
  return "?";
}

torch::nn::Sequential block(int64_t d, int64_t h) {
  return torch::nn::Sequential(torch::nn::Linear(d, h), torch::nn::GELU(), torch::nn::Linear(h, d));
}

// Two blocks, the same parameters (names and values) whichever way they are checkpointed.
struct TwoBlocksImpl : torch::nn::Module {
  explicit TwoBlocksImpl(Wrap w) : wrap(w) {
    b1 = register_module("b1", block(16, 40));
    b2 = register_module("b2", block(16, 40));
  }
  at::Tensor forward(const at::Tensor& x) {
    switch (wrap) {
      case Wrap::kPlain:
        return b2->forward(b1->forward(x));
      case Wrap::kCheckpointModule:
        return Checkpoint(b2)(Checkpoint(b1)(x));
      case Wrap::kFunctional: {
        auto s1 = b1, s2 = b2;
        auto h =
            functional::checkpoint([s1](const at::Tensor& t) mutable { return s1->forward(t); }, x, s1->parameters());
        return functional::checkpoint([s2](const at::Tensor& t) mutable { return s2->forward(t); }, h,
                                      s2->parameters());
      }
      case Wrap::kNested: {
        auto s1 = b1, s2 = b2;
        return functional::checkpoint(
            [s1, s2](const at::Tensor& t) { return functional::checkpoint(s2, functional::checkpoint(s1, t)); }, x,
            parameters());
      }
    }
    return {};
  }
  Wrap wrap;
  torch::nn::Sequential b1{nullptr}, b2{nullptr};
};
TORCH_MODULE(TwoBlocks);

using Grads = std::map<std::string, at::Tensor>;

// Two training steps (SGD) under a 3-bit Palettizer; the gradients of both steps.
std::vector<Grads> train_two_steps(Wrap wrap, bool backward_in_scope, bool offload) {
  torch::manual_seed(3);
  TwoBlocks model(wrap);
  Palettizer pal(model, PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)));
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.05));
  auto off = std::make_shared<Offloader>(OffloadOptions().min_bytes(0).host_to_host(true));
  std::vector<Grads> out;
  for (int step = 0; step < 2; ++step) {
    const at::Tensor x = at::randn({6, 16}, at::make_generator<at::CPUGeneratorImpl>(10 + step));
    std::optional<SavedTensorHooksGuard> hooks;
    if (offload) hooks.emplace(off);
    opt.zero_grad();
    at::Tensor loss;
    {
      auto scope = pal.clustered();
      loss = model->forward(x).square().mean();
      if (backward_in_scope) loss.backward();
    }
    if (!backward_in_scope) loss.backward();
    hooks.reset();
    Grads g;
    for (const auto& p : model->named_parameters()) g[p.key()] = p.value().grad().clone();
    out.push_back(std::move(g));
    opt.step();
    pal.step();
  }
  return out;
}

void expect_bitwise(const std::vector<Grads>& a, const std::vector<Grads>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t s = 0; s < a.size(); ++s) {
    ASSERT_EQ(a[s].size(), b[s].size());
    for (const auto& [name, g] : a[s]) {
      EXPECT_TRUE(at::equal(g, b[s].at(name)))
          << what << ", step " << s << ", " << name << ": max rel diff " << test::max_rel(b[s].at(name), g);
    }
  }
}

TEST(PalettizerRecompute, CheckpointedGradientsAreBitwiseThePlainOnes) {
  const auto reference = train_two_steps(Wrap::kPlain, /*backward_in_scope=*/true, /*offload=*/false);
  // The reference is itself independent of where backward runs.
  expect_bitwise(reference, train_two_steps(Wrap::kPlain, false, false), "plain, backward after the scope");
  for (Wrap w : {Wrap::kCheckpointModule, Wrap::kFunctional, Wrap::kNested}) {
    for (bool inside : {true, false}) {
      expect_bitwise(reference, train_two_steps(w, inside, false),
                     std::string(wrap_name(w)) + (inside ? ", backward in the scope" : ", backward after the scope"));
    }
  }
}

TEST(PalettizerRecompute, OffloaderCheckpointAndPalettizerTogether) {
  const auto reference = train_two_steps(Wrap::kPlain, true, false);
  for (Wrap w : {Wrap::kCheckpointModule, Wrap::kNested}) {
    for (bool inside : {true, false}) {
      expect_bitwise(reference, train_two_steps(w, inside, /*offload=*/true),
                     std::string(wrap_name(w)) + " + Offloader" + (inside ? ", in scope" : ", after scope"));
    }
  }
}

// A frozen first layer (clustered, no gradient) and a trainable second one, checkpointed with
// params naming the trainable layer's tensors: its Parameters, or what `l2->weight` holds inside
// the scope (the clustered tensor). The recompute reads both layers' clustered weights.
struct FrozenFirstImpl : torch::nn::Module {
  FrozenFirstImpl() {
    l1 = register_module("l1", torch::nn::Linear(16, 32));
    l2 = register_module("l2", torch::nn::Linear(32, 16));
  }
  at::Tensor body(const at::Tensor& x) { return l2->forward(at::gelu(l1->forward(x))); }
  torch::nn::Linear l1{nullptr}, l2{nullptr};
};
TORCH_MODULE(FrozenFirst);

enum class Listed { kNone, kParameters, kReadInScope };

// Gradients of l2 (weight, bias) and of the input after one step.
std::vector<at::Tensor> frozen_first_grads(Listed listed, bool backward_in_scope, bool freeze_first = true) {
  torch::manual_seed(8);
  FrozenFirst model;
  if (freeze_first) {
    for (auto& p : model->l1->parameters()) p.requires_grad_(false);
  }
  Palettizer pal(model, PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)));
  const at::Tensor x = at::randn({5, 16}, at::make_generator<at::CPUGeneratorImpl>(21)).requires_grad_(true);
  at::Tensor loss;
  {
    auto scope = pal.clustered();
    auto fn = [model](const at::Tensor& t) mutable { return model->body(t); };
    at::Tensor y;
    switch (listed) {
      case Listed::kNone:
        y = model->body(x);
        break;
      case Listed::kParameters:
        y = functional::checkpoint(fn, x, model->l2->parameters());
        break;
      case Listed::kReadInScope:
        y = functional::checkpoint(fn, x, {model->l2->weight, model->l2->bias});
        break;
    }
    loss = y.square().mean();
    if (backward_in_scope) loss.backward();
  }
  if (!backward_in_scope) loss.backward();
  return {model->l2->named_parameters(false)["weight"].grad(), model->l2->named_parameters(false)["bias"].grad(),
          x.grad()};
}

TEST(PalettizerRecompute, ListedClusteredTensorsAndFrozenLayersGetThePlainGradients) {
  for (bool inside : {true, false}) {
    const auto reference = frozen_first_grads(Listed::kNone, inside);
    for (Listed l : {Listed::kParameters, Listed::kReadInScope}) {
      const auto got = frozen_first_grads(l, inside);
      const std::string what = std::string(l == Listed::kParameters ? "parameters()" : "l2->weight in the scope") +
                               (inside ? ", backward in the scope" : ", backward after the scope");
      for (size_t i = 0; i < reference.size(); ++i) {
        ASSERT_TRUE(got[i].defined()) << what << ", gradient " << i;
        EXPECT_GT(got[i].abs().max().item<double>(), 0) << what << ", gradient " << i;
        EXPECT_TRUE(at::equal(got[i], reference[i]))
            << what << ", gradient " << i << ": max rel diff " << test::max_rel(got[i], reference[i]);
      }
    }
  }
}

// A checkpoint of l2 alone keeps no reference to l1's (trainable) clustered weight: it is freed
// when the scope ends, not held by every checkpoint node until backward.
TEST(PalettizerRecompute, CheckpointsKeepNoOtherLayersTrainableClusteredWeight) {
  FrozenFirst model;
  Palettizer pal(model, PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)));
  const at::Tensor x = at::randn({5, 32});
  c10::weak_intrusive_ptr<c10::TensorImpl> l1_clustered(c10::intrusive_ptr<c10::TensorImpl>::reclaim(nullptr));
  at::Tensor loss;
  {
    auto scope = pal.clustered();
    l1_clustered = c10::weak_intrusive_ptr<c10::TensorImpl>(model->l1->weight.getIntrusivePtr());
    auto l2 = model->l2;
    loss = functional::checkpoint([l2](const at::Tensor& t) mutable { return l2->forward(t); }, x, l2->parameters())
               .square()
               .mean();
  }
  EXPECT_TRUE(l1_clustered.expired());
  loss.backward();
  EXPECT_GT(model->l2->named_parameters(false)["weight"].grad().abs().max().item<double>(), 0);
}

// l1 trainable but only l2's parameters listed: its gradient has nowhere to go.
TEST(PalettizerRecompute, TrainableLayerLeftOutOfParamsIsNamed) {
  for (bool inside : {true, false}) {
    test::expect_error([&] { frozen_first_grads(Listed::kParameters, inside, /*freeze_first=*/false); },
                       {"layer 'l1'", "not among params", "parameters()"});
  }
}

// ---- bad uses ------------------------------------------------------------------------------------

TEST(PalettizerRecompute, TwoPalettizersOnOneModelAreRefused) {
  TwoBlocks model(Wrap::kPlain);
  auto first = std::make_unique<Palettizer>(
      model,
      PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)).module_name("b2\\.2", std::nullopt));
  test::expect_error(
      [&] { Palettizer second(model, PalettizerOptions(DKMOptions(4).engine(Engine::kDense).weight_threshold(0))); },
      {"layer 'b1.0'", "already clustered by another Palettizer"});
  // A palettizer of the layers the first one leaves alone is fine.
  Palettizer disjoint(
      model,
      PalettizerOptions(std::nullopt).module_name("b2\\.2", DKMOptions(2).engine(Engine::kDense).weight_threshold(0)));
  EXPECT_EQ(disjoint.layer_names(), std::vector<std::string>{"b2.2"});
  // A refused palettizer registered nothing: after the first is gone, its layers are free.
  first.reset();
  Palettizer third(
      model,
      PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)).module_name("b2\\.2", std::nullopt));
  EXPECT_EQ(third.layer_names().size(), 3u);
  test::expect_error(
      [&] { Palettizer again(model, PalettizerOptions(DKMOptions(2).engine(Engine::kDense).weight_threshold(0))); },
      {"already clustered"});
}

TEST(PalettizerRecompute, RemovedLayerIsNamed) {
  TwoBlocks model(Wrap::kPlain);
  Palettizer pal(model, PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)));
  model->b2->replace_module("0", torch::nn::Linear(16, 40));
  test::expect_error([&] { auto s = pal.clustered(); }, {"layer 'b2.0'", "removed from the model or replaced"});
  test::expect_error([&] { pal.finalize(); }, {"layer 'b2.0'"});
}

TEST(PalettizerRecompute, WeightReplacedInsideAScopeIsReportedAndRestored) {
  TwoBlocks model(Wrap::kPlain);
  Palettizer pal(model, PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)));
  auto* lin = model->b1[0]->as<torch::nn::Linear>();
  const at::Tensor param = lin->named_parameters(false)["weight"];
  {
    auto s = pal.clustered();
    EXPECT_FALSE(lin->weight.is_same(param));  // clustered
    lin->weight = at::zeros_like(param);
  }
  EXPECT_TRUE(lin->weight.is_same(param));  // nothing half-swapped
  test::expect_error([&] { pal.step(); }, {"layer 'b1.0'", "was replaced while a clustered() scope was open"});
  // Reported once; the palettizer works on.
  EXPECT_NO_THROW({ auto s = pal.clustered(); });
  for (const auto& m : model->modules()) {
    if (auto* l = m->as<torch::nn::Linear>()) EXPECT_TRUE(l->weight.is_same(l->named_parameters(false)["weight"]));
  }
}

TEST(PalettizerRecompute, ModelToInsideAScopeIsReported) {
  TwoBlocks model(Wrap::kPlain);
  Palettizer pal(model, PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)));
  {
    auto s = pal.clustered();
    model->to(at::kDouble);
  }
  for (const auto& m : model->modules()) {
    if (auto* l = m->as<torch::nn::Linear>()) {
      EXPECT_TRUE(l->weight.is_same(l->named_parameters(false)["weight"]));
      EXPECT_EQ(l->weight.scalar_type(), at::kDouble);
    }
  }
  test::expect_error([&] { auto s = pal.clustered(); }, {"layer 'b1.0'", "model->to()", "Float", "Double"});
  // Outside a scope, model->to() just works: the next scope clusters the fp64 weights.
  at::Tensor y;
  {
    auto s = pal.clustered();
    y = model->forward(at::randn({2, 16}, at::kDouble));
  }
  y.sum().backward();
  EXPECT_EQ(model->b1[0]->as<torch::nn::Linear>()->weight.grad().scalar_type(), at::kDouble);
}

// ---- state as a module ---------------------------------------------------------------------------

TEST(PalettizerRecompute, StateIsAModuleThatSavesLoadsAndClones) {
  test::TempDir tmp;
  torch::manual_seed(4);
  TwoBlocks model(Wrap::kPlain);
  Palettizer pal(
      model,
      PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0))
          .module_name("b2\\.2", DKMOptions(2).engine(Engine::kDense).weight_threshold(0).per_channel_scale(true)));
  for (int i = 0; i < 2; ++i) {
    at::Tensor loss;
    {
      auto s = pal.clustered();
      loss = model->forward(at::randn({3, 16})).square().sum();
    }
    loss.backward();
    pal.step();
  }
  auto buffers = pal.state()->named_buffers();
  for (const char* name : {"b1_0.centroids", "b1_0.step", "b2_2.scale", "step", "finalized"})
    EXPECT_TRUE(buffers.contains(name)) << name;
  EXPECT_EQ(buffers["b1_0.centroids"].sizes(), (at::IntArrayRef{1, 8, 1}));
  EXPECT_EQ(buffers["step"].item<int64_t>(), 2);
  EXPECT_EQ(buffers["b2_2.step"].item<int64_t>(), 2);

  // clone(): an independent deep copy.
  auto copy = std::dynamic_pointer_cast<PalettizerStateImpl>(pal.state()->clone());
  ASSERT_TRUE(copy);
  EXPECT_TRUE(at::equal(copy->named_buffers()["b1_0.centroids"], buffers["b1_0.centroids"]));
  copy->named_buffers()["b1_0.centroids"].zero_();
  EXPECT_FALSE(at::equal(copy->named_buffers()["b1_0.centroids"], buffers["b1_0.centroids"]));
  EXPECT_EQ(copy->step(), 2);

  // torch::save / torch::load into a fresh palettizer of the same configuration.
  torch::save(pal.state(), tmp.path("state.pt"));
  TwoBlocks other_model(Wrap::kPlain);
  Palettizer other(
      other_model,
      PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0))
          .module_name("b2\\.2", DKMOptions(2).engine(Engine::kDense).weight_threshold(0).per_channel_scale(true)));
  auto other_state = other.state();
  torch::load(other_state, tmp.path("state.pt"));
  EXPECT_EQ(other.current_step(), 2);
  EXPECT_EQ(other.dkm("b2.0")->current_step(), 2);
  for (const auto& b : pal.state()->named_buffers())
    EXPECT_TRUE(at::equal(b.value(), other_state->named_buffers()[b.key()])) << b.key();

  // Different options: refused by name, nothing changed.
  TwoBlocks third_model(Wrap::kPlain);
  Palettizer third(third_model, PalettizerOptions(DKMOptions(4).engine(Engine::kDense).weight_threshold(0)));
  auto third_state = third.state();
  test::expect_error([&] { torch::load(third_state, tmp.path("state.pt")); }, {"layer 'b1.0'", "bits = 3", "4"});
  EXPECT_EQ(third.current_step(), 0);
  EXPECT_EQ(third.state()->named_buffers()["b1_0.centroids"].numel(), 0);
  // Not a state file at all.
  torch::save(model, tmp.path("model.pt"));
  test::expect_error([&] { other.load_state(tmp.path("model.pt")); }, {"model.pt", "not a Palettizer state"});
  test::expect_error([&] { other.load_state(tmp.path("missing.pt")); }, {"missing.pt"});

  // to(dtype) converts the centroids and scales; step and finalized keep their types, so the
  // state still saves and loads.
  pal.state()->to(at::kBFloat16);
  buffers = pal.state()->named_buffers();
  EXPECT_EQ(buffers["b1_0.centroids"].scalar_type(), at::kBFloat16);
  EXPECT_EQ(buffers["b2_2.scale"].scalar_type(), at::kBFloat16);
  EXPECT_EQ(buffers["step"].scalar_type(), at::kLong);
  EXPECT_EQ(buffers["b1_0.step"].scalar_type(), at::kLong);
  EXPECT_EQ(buffers["finalized"].scalar_type(), at::kBool);
  torch::save(pal.state(), tmp.path("state_bf16.pt"));
  pal.state()->to(at::kCPU, at::kFloat);
  EXPECT_EQ(pal.state()->named_buffers()["step"].scalar_type(), at::kLong);
  torch::load(other_state, tmp.path("state_bf16.pt"));  // into an fp32 state: the file's dtype
  EXPECT_EQ(other.current_step(), 2);
  EXPECT_EQ(other.dkm("b1.0")->current_step(), 2);
  EXPECT_EQ(other_state->named_buffers()["b1_0.centroids"].scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(other_state->named_buffers()["b1_0.centroids"],
                        pal.state()->named_buffers()["b1_0.centroids"].to(at::kBFloat16)));
}

// ---- per-step cost --------------------------------------------------------------------------------

// Host syncs (item(), bool conversion of a tensor) seen by the dispatcher while `f` runs.
template <class F>
int64_t count_host_syncs(F&& f) {
  static std::atomic<int64_t> count{0};
  count = 0;
  auto handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback([](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
        const std::string name = fn.name();
        if (name == "aten::_local_scalar_dense" || name == "aten::is_nonzero") ++count;
        return nullptr;
      }));
  f();
  at::removeCallback(handle);
  return count.load();
}

TEST(PalettizerRecompute, ChecksRunOncePerSetUpNotPerStep) {
  torch::manual_seed(8);
  for (auto [engine, dtype] : {std::pair{Engine::kTable, at::kBFloat16}, std::pair{Engine::kStreaming, at::kFloat},
                               std::pair{Engine::kDense, at::kFloat}}) {
    const auto o = DKMOptions(3).engine(engine).weight_threshold(0);
    const at::Tensor w = at::randn({64, 32}).to(dtype).requires_grad_(true);
    DKM dkm(o);
    const int64_t first = count_host_syncs([&] { dkm->forward(w).sum().backward(); });
    const int64_t per_step = count_host_syncs([&] { dkm->forward(w).sum().backward(); });
    const at::Tensor c = dkm->centroids().clone();
    const int64_t functional_call = count_host_syncs([&] { functional::dkm_cluster(w, c, o).weight.sum().backward(); });
    std::cout << "[host syncs] " << to_string(engine) << ": module first step " << first << ", later steps " << per_step
              << ", functional::dkm_cluster (checks every call) " << functional_call << "\n";
    // The checks (weight finiteness, centroids, scale) cost 2 syncs per call; a module pays them once.
    EXPECT_LE(per_step + 2, functional_call) << to_string(engine);
    EXPECT_LT(per_step, first) << to_string(engine);
  }
}

// Warnings raised while `f` runs, one per line.
template <class F>
std::string warnings_of(F&& f) {
  std::string warnings;
  struct Capture : c10::WarningHandler {
    std::string* out;
    explicit Capture(std::string* o) : out(o) {}
    void process(const c10::Warning& w) override { *out += w.msg() + "\n"; }
  } capture(&warnings);
  c10::WarningUtils::WarningHandlerGuard guard(&capture);
  f();
  return warnings;
}

// One training step and a saved state of a one-Linear model of `rows` output rows.
void save_one_step_state(int64_t rows, const PalettizerOptions& options, const std::string& path) {
  torch::nn::Sequential model(torch::nn::Linear(16, rows));
  Palettizer pal(model, options);
  at::Tensor loss;
  {
    auto s = pal.clustered();
    loss = model->forward(at::randn({3, 16})).square().sum();
  }
  loss.backward();
  pal.step();
  pal.save_state(path);
}

TEST(PalettizerRecompute, StateOfAModelWithOtherShapesIsRefusedChangingNothing) {
  test::TempDir tmp;
  const auto grouped = PalettizerOptions(DKMOptions(3)
                                             .engine(Engine::kDense)
                                             .weight_threshold(0)
                                             .granularity(Granularity::kPerGroupedChannel)
                                             .group_size(16));
  const auto scaled =
      PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0).per_channel_scale(true));
  for (const auto& [options, what] :
       {std::pair<PalettizerOptions, std::string>{grouped, "centroids"}, {scaled, "scale"}}) {
    save_one_step_state(48, options, tmp.path("big.pt"));
    save_one_step_state(32, options, tmp.path("small.pt"));
    torch::nn::Sequential model(torch::nn::Linear(16, 32));
    Palettizer pal(model, options);
    pal.load_state(tmp.path("small.pt"));
    EXPECT_EQ(pal.current_step(), 1);
    const at::Tensor before = pal.dkm("0")->centroids().clone();
    test::expect_error([&] { pal.load_state(tmp.path("big.pt")); },
                       {"big.pt", "layer '0'", what, "a state of a model with other shapes"});
    EXPECT_TRUE(at::equal(pal.dkm("0")->centroids(), before)) << what;
    EXPECT_NO_THROW({ auto s = pal.clustered(); }) << what;
  }
}

// A finalized state loaded with its finalized model exports, also into a palettizer that was
// finalized before (its cached palettes belong to the weights it had then).
TEST(PalettizerRecompute, LoadingAFinalizedStateDropsThePalettesOfAnEarlierFinalize) {
  test::TempDir tmp;
  const auto options = PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0));
  auto train_and_finalize = [&](uint64_t seed, TwoBlocks& model, Palettizer& pal) {
    torch::manual_seed(seed);
    for (auto& p : model->parameters()) {
      at::NoGradGuard ng;
      p.copy_(at::randn_like(p));
    }
    at::Tensor loss;
    {
      auto s = pal.clustered();
      loss = model->forward(at::randn({3, 16})).square().sum();
    }
    loss.backward();
    pal.step();
    pal.finalize();
  };
  TwoBlocks first(Wrap::kPlain);
  Palettizer first_pal(first, options);
  train_and_finalize(1, first, first_pal);
  first_pal.save_state(tmp.path("state.pt"));
  torch::save(first, tmp.path("model.pt"));
  const CompressedCheckpoint expect = first_pal.compressed_checkpoint();

  TwoBlocks second(Wrap::kPlain);
  Palettizer second_pal(second, options);
  train_and_finalize(2, second, second_pal);
  EXPECT_FALSE(second_pal.palettes().empty());
  torch::load(second, tmp.path("model.pt"));
  second_pal.load_state(tmp.path("state.pt"));
  EXPECT_TRUE(second_pal.palettes().empty());
  const CompressedCheckpoint got = second_pal.compressed_checkpoint();
  ASSERT_EQ(got.palettes.size(), expect.palettes.size());
  for (const auto& [name, p] : expect.palettes)
    EXPECT_TRUE(at::equal(got.palettes.at(name).decompress(), p.decompress())) << name;
}

TEST(PalettizerRecompute, PatternsMatchingNothingNoLayerAndTrainingAfterFinalizeWarn) {
  TwoBlocks model(Wrap::kPlain);
  std::string w = warnings_of([&] {
    Palettizer pal(model, PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0))
                              .module_name("lm_head", std::nullopt)
                              .module_name("b1\\.0", std::nullopt));
    EXPECT_EQ(pal.layer_names().size(), 3u);
  });
  EXPECT_NE(w.find("pattern 'lm_head' matches no module path"), std::string::npos) << w;
  EXPECT_EQ(w.find("b1\\.0"), std::string::npos) << w;
  w = warnings_of([&] { Palettizer none(model, PalettizerOptions(DKMOptions(3).weight_threshold(1 << 20))); });
  EXPECT_NE(w.find("no layer of the model is selected"), std::string::npos) << w;
  Palettizer pal(model, PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)));
  pal.finalize();
  w = warnings_of([&] { auto s = pal.clustered(); });
  EXPECT_NE(w.find("after finalize()"), std::string::npos) << w;
}

TEST(PalettizerRecompute, AutoFallingBackToDenseWarnsOnceNamingTheLayer) {
  // cluster_dim 32 is beyond the streaming engine: kAuto falls back to dense.
  TwoBlocks model(Wrap::kPlain);
  Palettizer pal(
      model,
      PalettizerOptions(std::nullopt)
          .module_name("b1\\.0",
                       DKMOptions(2).engine(Engine::kDense).weight_threshold(0).cluster_dim(20).engine(Engine::kAuto)));
  const std::string warnings = warnings_of([&] {
    for (int i = 0; i < 3; ++i) {
      auto s = pal.clustered();
    }
  });
  EXPECT_NE(warnings.find("layer 'b1.0'"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find("falls back to the dense engine"), std::string::npos) << warnings;
  EXPECT_NE(warnings.find("cluster_dim"), std::string::npos) << warnings;
  size_t n = 0;
  for (size_t at = warnings.find("falls back"); at != std::string::npos; at = warnings.find("falls back", at + 1)) ++n;
  EXPECT_EQ(n, 1u) << warnings;
}

}  // namespace
}  // namespace edkm
