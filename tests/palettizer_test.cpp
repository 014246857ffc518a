// edkm/palettizer/palettizer.h: layer selection, the clustered forward and its gradients, milestones,
// finalize + export + reload, compressed size, and bitwise resume after an interruption.
#include <ATen/ops/_unique.h>
#include <edkm/io/checkpoint.h>
#include <edkm/io/safetensors.h>
#include <edkm/palettizer/palettizer.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/serialize.h>
#include <limits>
#include <map>

#include "io/safetensors_core.h"
#include "temp_dir.h"
#include "test_util.h"

namespace edkm {
namespace {

struct MlpImpl : torch::nn::Module {
  MlpImpl(int64_t d, int64_t h)
      : up(register_module("up", torch::nn::Linear(d, h))), down(register_module("down", torch::nn::Linear(h, d))) {}
  at::Tensor forward(const at::Tensor& x) { return down(at::silu(up(x))); }
  torch::nn::Linear up, down;
};
TORCH_MODULE(Mlp);

// embed -> [x + mlp(x)] x L -> head: paths "embed", "layers.0.up", ..., "head".
struct TinyLmImpl : torch::nn::Module {
  TinyLmImpl(int64_t vocab, int64_t d, int64_t h, int64_t n_layers, bool head_bias = true) {
    embed = register_module("embed", torch::nn::Embedding(vocab, d));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < n_layers; ++i) {
      mlps.emplace_back(d, h);
      layers->push_back(mlps.back());
    }
    head = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(d, vocab).bias(head_bias)));
  }
  at::Tensor forward(const at::Tensor& tokens) {
    auto x = embed(tokens);
    for (auto& m : mlps) x = x + m(x);
    return head(x);
  }
  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<Mlp> mlps;
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(TinyLm);

struct PalettizerTest : ::testing::Test {
  test::TempDir tmp;
  std::string path(const std::string& name) const { return tmp.path(name); }
};

at::Tensor tokens(int64_t step, int64_t vocab, int64_t n = 16) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 + step);
  return at::randint(0, vocab, {n}, gen, at::kLong);
}

// Steps [from, to) of the user's loop: clustered forward, backward, optimizer step, palettizer step.
void train(TinyLm& model, torch::optim::Adam& opt, Palettizer& pal, int64_t from, int64_t to) {
  for (int64_t s = from; s < to; ++s) {
    at::Tensor loss;
    {
      auto clustered = pal.clustered();
      loss = model->forward(tokens(s, 64)).square().mean();
    }
    opt.zero_grad();
    loss.backward();
    opt.step();
    pal.step();
  }
}

// DKMOptions' default engine is kAuto: options that name no engine get the table engine on 16-bit
// weights and the streaming engine on fp32 ones (memory O(N)), the dense reference's O(T * N * K)
// maps only where neither takes the weight (vectors longer than 16 values).
TEST(PalettizerOptions, DefaultEngineIsTableOrStreamingWhereTheyApply) {
  torch::manual_seed(5);
  TinyLm model(64, 32, 96, 2);
  model->mlps[1]->down->to(at::kBFloat16);
  EXPECT_EQ(DKMOptions(3).engine(), Engine::kAuto);
  Palettizer pal(model, PalettizerOptions(DKMOptions(3).weight_threshold(0))
                            .module_type("Embedding", DKMOptions(8).weight_threshold(0))
                            .module_name("layers.0.down", DKMOptions(2).weight_threshold(0).cluster_dim(32)));
  std::map<std::string, std::string> engine;
  for (const auto& l : pal.report().layers) engine[l.name] = l.engine;
  EXPECT_EQ(engine.at("embed"), "streaming");
  EXPECT_EQ(engine.at("layers.0.up"), "streaming");
  EXPECT_EQ(engine.at("layers.1.down"), "table");
  EXPECT_EQ(engine.at("layers.0.down"), "dense");  // cluster_dim 32 > 16: only the dense engine
  EXPECT_EQ(engine.at("head"), "streaming");
}

TEST(PalettizerOptions, NameBeatsTypeBeatsGlobal) {
  torch::manual_seed(0);
  TinyLm model(64, 32, 96, 2);
  auto opts = PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0))
                  .module_type("Embedding", DKMOptions(8).engine(Engine::kDense).weight_threshold(0))
                  .module_name(R"(layers\.1\..*)", DKMOptions(4).engine(Engine::kDense).weight_threshold(0))
                  .module_name("head", std::nullopt);
  // One Palettizer per model at a time (a second one on the same layers is refused): each below
  // is destroyed before the next is built.
  {
    Palettizer pal(model, opts);
    EXPECT_EQ(pal.layer_names(),
              (std::vector<std::string>{"embed", "layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down"}));
    EXPECT_EQ(pal.dkm("embed")->options.bits(), 8);
    EXPECT_EQ(pal.dkm("layers.0.up")->options.bits(), 3);
    EXPECT_EQ(pal.dkm("layers.1.down")->options.bits(), 4);
    test::expect_error([&] { pal.dkm("head"); }, {"no selected layer 'head'"});
  }
  {
    // Global "none": only what types and names select; names match the whole path.
    Palettizer only(model, PalettizerOptions(std::nullopt)
                               .module_type("Linear", DKMOptions(2).engine(Engine::kDense).weight_threshold(0))
                               .module_name("layers.0.up", std::nullopt)
                               .module_name("layers", DKMOptions(5).engine(Engine::kDense).weight_threshold(0)));
    EXPECT_EQ(only.layer_names(), (std::vector<std::string>{"layers.0.down", "layers.1.up", "layers.1.down", "head"}));
  }
  {
    // The size threshold: 64 x 32 = 2048 elements is not more than the default 2048.
    Palettizer sized(model, PalettizerOptions(DKMOptions(3).engine(Engine::kDense))
                                .module_type("Embedding", DKMOptions(3).engine(Engine::kDense)));
    EXPECT_EQ(sized.layer_names(),
              (std::vector<std::string>{"layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down"}));
  }

  test::expect_error([&] { PalettizerOptions().module_type("LSTM", DKMOptions(3).engine(Engine::kDense)); },
                     {"'LSTM'", "not supported"});
  test::expect_error([&] { PalettizerOptions().module_name("layers.(", DKMOptions(3).engine(Engine::kDense)); },
                     {"not a valid regular expression"});
  test::expect_error([&] { PalettizerOptions().module_name("x", DKMOptions(9).engine(Engine::kDense)); },
                     {"bits must be in 1..8"});
  test::expect_error(
      [&] {
        Palettizer(model, PalettizerOptions(DKMOptions(3)
                                                .engine(Engine::kDense)
                                                .weight_threshold(0)
                                                .granularity(Granularity::kPerGroupedChannel)
                                                .group_size(7)));
      },
      {"layer 'embed'", "group_size 7 does not divide"});
}

// The forward inside a scope uses the DKM output; the gradient reaching the original Parameter
// equals the one of calling functional::dkm_cluster by hand from the same centroids.
TEST(Palettizer, GradientsReachTheOriginalParameters) {
  torch::manual_seed(1);
  TinyLm model(64, 32, 96, 1);
  const auto o = DKMOptions(3).engine(Engine::kDense).weight_threshold(0);
  Palettizer pal(model, PalettizerOptions(o));
  const auto params_before = model->parameters();
  const auto x = tokens(0, 64);
  {  // first step initialises the centroids
    auto clustered = pal.clustered();
    model->forward(x).square().mean().backward();
  }
  pal.step();
  std::map<std::string, at::Tensor> cents;
  for (const auto& name : pal.layer_names()) cents[name] = pal.dkm(name)->centroids().clone();
  for (auto& p : model->parameters()) p.mutable_grad() = at::Tensor();

  at::Tensor loss;
  {
    auto clustered = pal.clustered();
    EXPECT_FALSE(model->head->weight.is_same(model->head->named_parameters()["weight"]));
    loss = model->forward(x).square().mean();
  }
  loss.backward();  // after the scope: the graph holds what it needs
  // The members are the Parameters again, and the optimizer's list is unchanged.
  EXPECT_TRUE(model->head->weight.is_same(model->head->named_parameters()["weight"]));
  const auto params_after = model->parameters();
  ASSERT_EQ(params_before.size(), params_after.size());
  for (size_t i = 0; i < params_after.size(); ++i) EXPECT_TRUE(params_before[i].is_same(params_after[i]));

  // By hand, on detached copies.
  auto leaf = [](const at::Tensor& t) { return t.detach().clone().requires_grad_(true); };
  auto we = leaf(model->embed->weight), wu = leaf(model->mlps[0]->up->weight), wd = leaf(model->mlps[0]->down->weight),
       wh = leaf(model->head->weight);
  auto bu = leaf(model->mlps[0]->up->bias), bd = leaf(model->mlps[0]->down->bias), bh = leaf(model->head->bias);
  auto c = [&](const at::Tensor& w, const std::string& n) { return functional::dkm_cluster(w, cents[n], o).weight; };
  auto h = at::embedding(c(we, "embed"), x);
  h = h + at::linear(at::silu(at::linear(h, c(wu, "layers.0.up"), bu)), c(wd, "layers.0.down"), bd);
  at::linear(h, c(wh, "head"), bh).square().mean().backward();
  EXPECT_TRUE(at::equal(model->embed->weight.grad(), we.grad()));
  EXPECT_TRUE(at::equal(model->mlps[0]->up->weight.grad(), wu.grad()));
  EXPECT_TRUE(at::equal(model->mlps[0]->down->weight.grad(), wd.grad()));
  EXPECT_TRUE(at::equal(model->head->weight.grad(), wh.grad()));
  EXPECT_TRUE(at::equal(model->head->bias.grad(), bh.grad()));
  EXPECT_GT(model->head->weight.grad().abs().sum().item<double>(), 0);
}

TEST(Palettizer, MilestonesEvalAndScopeRules) {
  torch::manual_seed(2);
  TinyLm model(64, 32, 96, 1);
  Palettizer pal(model, PalettizerOptions(DKMOptions(2).engine(Engine::kDense).weight_threshold(0).milestone(1)));
  {
    auto clustered = pal.clustered();  // step 0 < milestone: the weight passes through
    EXPECT_TRUE(model->head->weight.is_same(model->head->named_parameters()["weight"]));
    test::expect_error([&] { auto nested = pal.clustered(); }, {"already open"});
  }
  pal.step();
  EXPECT_EQ(pal.current_step(), 1);
  {
    auto clustered = pal.clustered();
    EXPECT_FALSE(model->head->weight.is_same(model->head->named_parameters()["weight"]));
    EXPECT_TRUE(model->head->weight.requires_grad());
  }
  model->eval();
  {
    auto clustered = pal.clustered();  // eval: hard assignment, at most 4 values
    EXPECT_LE(std::get<0>(at::_unique(model->head->weight)).numel(), 4);
  }
}

TEST_F(PalettizerTest, FinalizeExportReloadAndReport) {
  torch::manual_seed(3);
  TinyLm model(64, 32, 96, 2);
  auto opts =
      PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0))
          .module_type("Embedding", DKMOptions(8).engine(Engine::kDense).weight_threshold(0))
          .module_name("layers.1.down", DKMOptions(4)
                                            .engine(Engine::kDense)
                                            .weight_threshold(0)
                                            .granularity(Granularity::kPerGroupedChannel)
                                            .group_size(8))
          .module_name("layers.1.up", DKMOptions(3).engine(Engine::kDense).weight_threshold(0).per_channel_scale(true));
  Palettizer pal(model, opts);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  train(model, opt, pal, 0, 3);
  const auto before = pal.report();
  const auto& palettes = pal.finalize();
  EXPECT_EQ(palettes.size(), 6u);
  EXPECT_TRUE(at::equal(palettes.at("layers.0.up.weight").decompress(), model->mlps[0]->up->weight));
  EXPECT_LE(std::get<0>(at::_unique(model->mlps[0]->up->weight)).numel(), 8);
  {  // after finalize a scope changes nothing
    auto clustered = pal.clustered();
    EXPECT_TRUE(model->head->weight.is_same(model->head->named_parameters()["weight"]));
  }
  const auto r = pal.report();
  ASSERT_EQ(r.layers.size(), 6u);
  EXPECT_EQ(r.layers[0].name, "embed");
  EXPECT_EQ(r.layers[0].bits, 8);
  EXPECT_EQ(r.layers[0].lut_size, 256);
  EXPECT_EQ(r.layers[0].engine, "dense");
  EXPECT_LE(r.layers[0].unique_values, 256);
  EXPECT_EQ(r.layers[4].name, "layers.1.down");
  EXPECT_EQ(r.layers[4].lut_size, 4 * 16);  // 32 rows / 8 per group, 16 entries
  EXPECT_EQ(r.layers[1].dense_bytes, 96 * 32 * 4);
  EXPECT_EQ(r.layers[1].packed_bytes, 96 * 32 * 3 / 8 + 8 * 4);
  // Before finalize the report already knew the unique values of the current hard assignment.
  for (size_t i = 0; i < r.layers.size(); ++i) EXPECT_EQ(before.layers[i].unique_values, r.layers[i].unique_values);
  const std::string table = r.to_string();
  for (const char* s : {"layer", "layers.1.down", "32x96", "total", "dense"}) {
    EXPECT_NE(table.find(s), std::string::npos) << s << "\n" << table;
  }

  // Export, reload into a fresh model: identical weights and outputs.
  pal.save_compressed(path("model.safetensors"));
  torch::manual_seed(99);
  TinyLm fresh(64, 32, 96, 2);
  load_compressed(*fresh, path("model.safetensors"));
  const auto a = model->named_parameters(), b = fresh->named_parameters();
  for (const auto& item : a) EXPECT_TRUE(at::equal(item.value(), b[item.key()])) << item.key();
  model->eval();
  fresh->eval();
  EXPECT_TRUE(at::equal(model->forward(tokens(9, 64)), fresh->forward(tokens(9, 64))));
  const auto back = load_compressed(path("model.safetensors"));
  for (const auto& [name, p] : palettes) {
    EXPECT_TRUE(at::equal(back.palettes.at(name).indices, p.indices)) << name;
    EXPECT_TRUE(at::equal(back.palettes.at(name).lut, p.lut)) << name;
  }
  EXPECT_EQ(back.tensors.size(), 5u);  // 4 MLP biases + head bias
}

// A finalized state resumed with its finalized model exports the same file (the palettes are
// the hard assignment of its weights); weights moved after finalize(), or not finalized, are
// refused at export instead of leaving the file stale or uncompressed.
TEST_F(PalettizerTest, ExportChecksThePalettesAgainstTheWeights) {
  torch::manual_seed(11);
  TinyLm model(64, 32, 96, 2);
  const auto opts = PalettizerOptions(DKMOptions(3).weight_threshold(0));
  Palettizer pal(model, opts);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  train(model, opt, pal, 0, 2);
  pal.finalize();
  pal.save_compressed(path("ref.safetensors"));
  pal.save_state(path("state.pt"));
  torch::save(model, path("model.pt"));
  {
    TinyLm again(64, 32, 96, 2);
    Palettizer resumed(again, opts);
    torch::load(again, path("model.pt"));
    resumed.load_state(path("state.pt"));
    ASSERT_TRUE(resumed.finalized());
    resumed.save_compressed(path("resumed.safetensors"));
    const auto a = load_compressed(path("ref.safetensors")), b = load_compressed(path("resumed.safetensors"));
    ASSERT_EQ(a.palettes.size(), 6u);
    ASSERT_EQ(b.palettes.size(), a.palettes.size());
    for (const auto& [name, p] : a.palettes) {
      EXPECT_TRUE(at::equal(b.palettes.at(name).indices, p.indices)) << name;
      EXPECT_TRUE(at::equal(b.palettes.at(name).lut, p.lut)) << name;
    }
  }
  {
    TinyLm unfinalized(64, 32, 96, 2);  // fresh weights with the finalized state
    Palettizer resumed(unfinalized, opts);
    resumed.load_state(path("state.pt"));
    test::expect_error([&] { resumed.save_compressed(path("x.safetensors")); },
                       {"not on its palette", "were not finalized", "call finalize() again"});
  }
  train(model, opt, pal, 2, 3);  // trains on after finalize()
  test::expect_error([&] { pal.save_compressed(path("x.safetensors")); },
                     {"is not on its palette", "changed after finalize()"});
  pal.finalize();
  EXPECT_NO_THROW(pal.save_compressed(path("x.safetensors")));
}

// A NaN or Inf weight: step() names the layer, every engine keeps the previous centroids (the
// table engine's soft weight is NaN there, not a finite stand-in), and restoring the weight
// recovers the layer.
TEST_F(PalettizerTest, NonFiniteWeightsAreReportedAndDoNotPoisonTheCentroids) {
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {  // streaming, table
    torch::manual_seed(12);
    TinyLm model(64, 32, 96, 1);
    model->to(dtype);
    Palettizer pal(model, PalettizerOptions(DKMOptions(3).weight_threshold(0)));
    auto& w = model->mlps[0]->up->weight;
    const at::Tensor good = w.detach().clone();
    auto forward = [&] {
      auto clustered = pal.clustered();
      return model->mlps[0]->up->weight.detach().clone();  // the soft weight inside the scope
    };
    forward();
    pal.step();
    const at::Tensor before = pal.state()->dkm(1)->centroids().clone();
    {
      at::NoGradGuard ng;
      w[3][5] = std::numeric_limits<float>::quiet_NaN();
      w[7][1] = std::numeric_limits<float>::infinity();
    }
    const at::Tensor soft = forward();
    EXPECT_TRUE(at::isnan(soft[3][5]).item<bool>()) << dtype;
    test::expect_error([&] { pal.step(); }, {"met NaN or Inf", "'layers.0.up'"});
    EXPECT_TRUE(at::equal(pal.state()->dkm(1)->centroids(), before)) << dtype;
    {
      at::NoGradGuard ng;
      w.copy_(good);
    }
    EXPECT_TRUE(at::isfinite(forward()).all().item<bool>()) << dtype;
    EXPECT_NO_THROW(pal.step());
  }
}

// A state saved when kDense was DKMOptions' default resumes under the default (kAuto): engines
// compute the same values. A module registered twice is clustered once (it was refused as "already
// clustered by another Palettizer") and exported packed under both names; a sparse-gradient
// Embedding is refused by name.
TEST_F(PalettizerTest, ResumesAcrossEnginesSharedModulesAndSparseEmbeddings) {
  torch::manual_seed(13);
  TinyLm model(64, 32, 96, 1);
  {
    Palettizer dense(model, PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)));
    torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
    train(model, opt, dense, 0, 1);
    dense.save_state(path("dense.pt"));
  }
  Palettizer automatic(model, PalettizerOptions(DKMOptions(3).weight_threshold(0)));
  EXPECT_NO_THROW(automatic.load_state(path("dense.pt")));
  EXPECT_EQ(automatic.current_step(), 1);

  struct SharedImpl : torch::nn::Module {
    SharedImpl() : a(register_module("a", torch::nn::Linear(32, 16))) { register_module("b", a); }
    torch::nn::Linear a;
  };
  auto shared = std::make_shared<SharedImpl>();
  Palettizer pal(shared, PalettizerOptions(DKMOptions(3).weight_threshold(0)));
  EXPECT_EQ(pal.report().layers.size(), 1u);
  {
    auto clustered = pal.clustered();
    shared->a->forward(at::randn({2, 32})).sum().backward();
  }
  pal.finalize();
  const auto ckpt = pal.compressed_checkpoint();
  EXPECT_EQ(ckpt.palettes.count("a.weight") + ckpt.palettes.count("b.weight"), 2u);  // both names, packed
  EXPECT_EQ(ckpt.tensors.count("b.weight"), 0u);
  test::expect_error(
      [&] {
        Palettizer other(
            shared,
            PalettizerOptions(DKMOptions(3).weight_threshold(0)).module_name("b", DKMOptions(4).weight_threshold(0)));
      },
      {"'b' shares its weight with layer 'a'", "other options"});

  torch::nn::Embedding sparse(torch::nn::EmbeddingOptions(64, 32).sparse(true));
  test::expect_error([&] { Palettizer p(sparse.ptr(), PalettizerOptions(DKMOptions(3).weight_threshold(0))); },
                     {"sparse gradients", "sparse(false)"});
}

// ~1M clustered weights at 3 bits: the file is N * 3 / 8 bytes plus LUTs plus a small header.
TEST_F(PalettizerTest, CompressedSizeIsBitsPerWeight) {
  torch::manual_seed(4);
  TinyLm model(2048, 128, 1024, 3, /*head_bias=*/false);  // 2048x128 x2 + 3 x 2 x 128x1024 = 1,310,720
  for (auto& m : model->mlps) {
    m->up->bias.data().zero_();
    m->down->bias.data().zero_();
  }
  Palettizer pal(
      model, PalettizerOptions(
                 DKMOptions(3).engine(Engine::kDense).max_iter(1).init(KMeansInit::kKMeansPlusPlus).init_max_iter(3)));
  pal.finalize();
  pal.save_compressed(path("big.safetensors"));
  int64_t n = 0, luts = 0, plain = 0;
  for (const auto& [name, p] : pal.palettes()) {
    n += p.numel();
    luts += static_cast<int64_t>(p.lut.nbytes());
  }
  for (const auto& [name, t] : pal.compressed_checkpoint().tensors) plain += static_cast<int64_t>(t.nbytes());
  EXPECT_EQ(n, 1310720);
  const int64_t expect = n * 3 / 8 + luts + plain;
  const auto size = static_cast<int64_t>(test::file_size(path("big.safetensors")));
  std::cout << "[ size     ] " << n << " weights at 3 bits: N*bits/8 = " << n * 3 / 8 << ", LUTs " << luts
            << ", plain tensors " << plain << ", file " << size << " bytes (" << 100.0 * (size - expect) / expect
            << "% over)\n";
  EXPECT_GE(size, expect);
  EXPECT_LE(size, expect + expect / 100);
  EXPECT_EQ(pal.compressed_checkpoint().tensor_bytes(), expect);
}

// Train k steps, save model + optimizer + palettizer, rebuild everything fresh, load and
// continue: the result equals an uninterrupted run, bitwise (CPU).
class PalettizerResume : public PalettizerTest, public ::testing::WithParamInterface<int64_t> {};

// k = 1: interrupted before the milestone (no centroids yet); k = 3: after it.
TEST_P(PalettizerResume, EqualsUninterruptedRun) {
  const int64_t total = 6, k = GetParam();
  auto make_opts = [] {
    return PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0).milestone(2))
        .module_type("Embedding", DKMOptions(4).engine(Engine::kDense).weight_threshold(0))
        .module_name("layers.0.up", DKMOptions(3).engine(Engine::kDense).weight_threshold(0).per_channel_scale(true))
        .module_name("layers.0.down", DKMOptions(2)
                                          .engine(Engine::kDense)
                                          .weight_threshold(0)
                                          .granularity(Granularity::kPerGroupedChannel)
                                          .group_size(8));
  };
  // Uninterrupted.
  torch::manual_seed(5);
  TinyLm a(64, 32, 96, 2);
  torch::optim::Adam opt_a(a->parameters(), torch::optim::AdamOptions(1e-2));
  Palettizer pal_a(a, make_opts());
  train(a, opt_a, pal_a, 0, total);

  // Interrupted at k.
  {
    torch::manual_seed(5);
    TinyLm b(64, 32, 96, 2);
    torch::optim::Adam opt_b(b->parameters(), torch::optim::AdamOptions(1e-2));
    Palettizer pal_b(b, make_opts());
    train(b, opt_b, pal_b, 0, k);
    torch::save(b, path("model.pt"));
    torch::save(opt_b, path("optim.pt"));
    pal_b.save_state(path("palettizer.pt"));
  }
  torch::manual_seed(77);  // a different init: everything must come from the files
  TinyLm c(64, 32, 96, 2);
  torch::optim::Adam opt_c(c->parameters(), torch::optim::AdamOptions(1e-2));
  Palettizer pal_c(c, make_opts());
  torch::load(c, path("model.pt"));
  torch::load(opt_c, path("optim.pt"));
  pal_c.load_state(path("palettizer.pt"));
  EXPECT_EQ(pal_c.current_step(), k);
  train(c, opt_c, pal_c, k, total);

  const auto pa = a->named_parameters(), pc = c->named_parameters();
  for (const auto& item : pa) EXPECT_TRUE(at::equal(item.value(), pc[item.key()])) << item.key();
  for (const auto& name : pal_a.layer_names()) {
    EXPECT_TRUE(at::equal(pal_a.dkm(name)->centroids(), pal_c.dkm(name)->centroids())) << name;
    EXPECT_EQ(pal_a.dkm(name)->current_step(), pal_c.dkm(name)->current_step());
  }
  const auto& fa = pal_a.finalize();
  const auto& fc = pal_c.finalize();
  for (const auto& [name, p] : fa) EXPECT_TRUE(at::equal(p.indices, fc.at(name).indices)) << name;

  // A palettizer configured differently refuses the state.
  TinyLm d(64, 32, 96, 2);
  Palettizer other(d, PalettizerOptions(DKMOptions(4).engine(Engine::kDense).weight_threshold(0).milestone(2))
                          .module_type("Embedding", DKMOptions(4).engine(Engine::kDense).weight_threshold(0))
                          .module_name("layers.0.up",
                                       DKMOptions(3).engine(Engine::kDense).weight_threshold(0).per_channel_scale(true))
                          .module_name("layers.0.down", DKMOptions(2)
                                                            .engine(Engine::kDense)
                                                            .weight_threshold(0)
                                                            .granularity(Granularity::kPerGroupedChannel)
                                                            .group_size(8)));
  test::expect_error([&] { other.load_state(path("palettizer.pt")); },
                     {"palettizer.pt", "saved with bits = 3", "with 4"});
  TinyLm e(64, 32, 96, 2);  // one Palettizer per model
  Palettizer fewer(
      e, PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)).module_name("head", std::nullopt));
  test::expect_error([&] { fewer.load_state(path("palettizer.pt")); }, {"holds 6 layers", "has 5"});
}
INSTANTIATE_TEST_SUITE_P(Interrupt, PalettizerResume, ::testing::Values(1, 3));

// Conv2d layers too: selected by type, swapped in the scope, gradient to the Parameter, finalized.
TEST_F(PalettizerTest, ClustersConvolutions) {
  torch::manual_seed(6);
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3)),
                            torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 4, 3)));
  Palettizer pal(
      net,
      PalettizerOptions(std::nullopt).module_type("Conv2d", DKMOptions(2).engine(Engine::kDense).weight_threshold(0)));
  ASSERT_EQ(pal.layer_names(), (std::vector<std::string>{"0", "1"}));
  auto conv = net[0]->as<torch::nn::Conv2dImpl>();
  const auto x = test::llm_like({2, 3, 8, 8}, 1) * 50;
  at::Tensor out;
  {
    auto clustered = pal.clustered();
    EXPECT_FALSE(conv->weight.is_same(conv->named_parameters()["weight"]));
    out = net->forward(x);
  }
  out.square().sum().backward();
  EXPECT_TRUE(conv->weight.grad().defined());
  EXPECT_GT(conv->weight.grad().abs().sum().item<double>(), 0);
  pal.finalize();
  EXPECT_LE(std::get<0>(at::_unique(conv->weight)).numel(), 4);
  pal.save_compressed(path("conv.safetensors"));
  torch::nn::Sequential fresh(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3)),
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 4, 3)));
  load_compressed(*fresh, path("conv.safetensors"));
  EXPECT_TRUE(at::equal(fresh->forward(x), net->forward(x)));
}

// The same recipe on a GPU: weights, centroids and the exported file round-trip.
TEST_F(PalettizerTest, TrainsFinalizesAndExportsOnGpu) {
  EDKM_SKIP_WITHOUT_GPU();
  torch::manual_seed(7);
  TinyLm model(64, 32, 96, 1);
  model->to(at::kCUDA);
  Palettizer pal(model, PalettizerOptions(DKMOptions(3).engine(Engine::kDense).weight_threshold(0)));
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  for (int64_t s = 0; s < 2; ++s) {
    at::Tensor loss;
    {
      auto clustered = pal.clustered();
      loss = model->forward(tokens(s, 64).cuda()).square().mean();
    }
    opt.zero_grad();
    loss.backward();
    opt.step();
    pal.step();
  }
  EXPECT_TRUE(pal.dkm("head")->centroids().is_cuda());
  pal.save_state(path("state.safetensors"));
  pal.finalize();
  pal.save_compressed(path("gpu.safetensors"));
  TinyLm fresh(64, 32, 96, 1);
  load_compressed(*fresh, path("gpu.safetensors"));
  for (const auto& item : model->named_parameters()) {
    EXPECT_TRUE(at::equal(item.value().cpu(), fresh->named_parameters()[item.key()])) << item.key();
  }
}

}  // namespace
}  // namespace edkm
