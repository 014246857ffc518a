// The LLaMA decoder against plain restatements (RoPE, attention, GQA, SwiGLU), activation
// checkpointing under a Palettizer, and the Hugging Face checkpoint reader/writer: round trips
// (fp32 exact, bf16, sharded, tied) and malformed checkpoints.
#include <edkm/io/safetensors.h>
#include <edkm/models/llama.h>
#include <edkm/models/llama_io.h>
#include <edkm/palettizer/palettizer.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "temp_dir.h"
#include "test_util.h"

namespace {

using edkm::LlamaConfig;
using edkm::LlamaForCausalLM;

LlamaConfig small_config() {
  return LlamaConfig::tiny()
      .vocab_size(50)
      .hidden_size(32)
      .intermediate_size(48)
      .num_attention_heads(4)
      .num_key_value_heads(2)
      .max_position_embeddings(64);
}

at::Tensor tokens(int64_t b, int64_t t, int64_t vocab, uint64_t seed = 1) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(vocab, {b, t}, g, at::kLong);
}

// Every parameter of `a` equal to the one of `b` (same names).
void copy_params(LlamaForCausalLM& dst, const LlamaForCausalLM& src) {
  torch::NoGradGuard ng;
  auto s = src->named_parameters();
  for (auto& p : dst->named_parameters()) p.value().copy_(s[p.key()]);
}

TEST(Llama, ShapesNamesAndParameterCount) {
  torch::manual_seed(0);
  LlamaForCausalLM model(small_config());
  EXPECT_EQ(model(tokens(2, 7, 50)).sizes(), (std::vector<int64_t>{2, 7, 50}));
  int64_t n = 0;
  for (const auto& p : model->parameters()) n += p.numel();
  EXPECT_EQ(n, small_config().num_parameters());
  const auto names = model->named_parameters();
  for (const char* name : {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.gate_proj.weight",
                           "model.layers.1.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
                           "model.layers.1.post_attention_layernorm.weight", "model.norm.weight", "lm_head.weight"}) {
    EXPECT_TRUE(names.contains(name)) << name;
  }
  EXPECT_EQ(names["model.layers.0.self_attn.k_proj.weight"].sizes(), (std::vector<int64_t>{16, 32}));  // 2 kv heads
  EXPECT_EQ(names.size(), 2 + 2 * 9 + 1u);
  LlamaForCausalLM tied(small_config().tie_word_embeddings(true));
  EXPECT_FALSE(tied->named_parameters().contains("lm_head.weight"));
  EXPECT_EQ(tied(tokens(1, 3, 50)).size(2), 50);
}

TEST(Llama, RotaryEmbeddingMatchesPairRotation) {
  auto cfg = small_config().rope_theta(500.0);
  const int64_t t = 9, d = cfg.resolved_head_dim();
  const at::Tensor x = at::randn({2, 3, t, d}, at::kDouble);
  auto [cos, sin] = edkm::functional::rotary_cos_sin(cfg, t);
  const at::Tensor y = edkm::functional::apply_rotary_embedding(x, cos.to(at::kDouble), sin.to(at::kDouble));
  // Hugging Face pairs element i with element i + d/2 and rotates the pair by p * theta^(-2i/d).
  auto xa = x.accessor<double, 4>();
  at::Tensor ref = at::empty_like(x);
  auto ra = ref.accessor<double, 4>();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 3; ++h)
      for (int64_t p = 0; p < t; ++p)
        for (int64_t i = 0; i < d / 2; ++i) {
          const double angle = p * std::pow(500.0, -2.0 * i / d);
          const double a = xa[b][h][p][i], c = xa[b][h][p][i + d / 2];
          ra[b][h][p][i] = a * std::cos(angle) - c * std::sin(angle);
          ra[b][h][p][i + d / 2] = c * std::cos(angle) + a * std::sin(angle);
        }
  EXPECT_LT(edkm::test::max_rel(y, ref), 1e-6);  // the tables are fp32
}

// The attention module against a naive composition: projections, rotation, repeated kv heads,
// masked softmax. Forward and the gradients of the input and of every projection.
TEST(Llama, AttentionMatchesNaiveReference) {
  torch::manual_seed(1);
  auto cfg = small_config();
  edkm::LlamaAttention attn(cfg);
  attn->to(at::kDouble);
  const int64_t b = 2, t = 6, h = 4, kv = 2, d = 8;
  const at::Tensor x = at::randn({b, t, 32}, at::kDouble).requires_grad_(true);
  auto [cos, sin] = edkm::functional::rotary_cos_sin(cfg, t);
  const at::Tensor y = attn(x, cos, sin);
  const at::Tensor g = at::randn_like(y);
  auto grads = torch::autograd::grad(
      {y}, {x, attn->q_proj->weight, attn->k_proj->weight, attn->v_proj->weight, attn->o_proj->weight}, {g});

  auto w = [&](const torch::nn::Linear& l) { return l->weight.detach().clone().requires_grad_(true); };
  at::Tensor wq = w(attn->q_proj), wk = w(attn->k_proj), wv = w(attn->v_proj), wo = w(attn->o_proj);
  const at::Tensor x2 = x.detach().clone().requires_grad_(true);
  auto rope = [&](const at::Tensor& z) {
    return edkm::functional::apply_rotary_embedding(z, cos.to(at::kDouble), sin.to(at::kDouble));
  };
  at::Tensor q = rope(x2.matmul(wq.t()).view({b, t, h, d}).transpose(1, 2));
  at::Tensor k = rope(x2.matmul(wk.t()).view({b, t, kv, d}).transpose(1, 2)).repeat_interleave(h / kv, 1);
  at::Tensor v = x2.matmul(wv.t()).view({b, t, kv, d}).transpose(1, 2).repeat_interleave(h / kv, 1);
  at::Tensor scores = q.matmul(k.transpose(-1, -2)) / std::sqrt(static_cast<double>(d));
  scores = scores.masked_fill(at::ones({t, t}, at::kBool).triu(1), -INFINITY);
  const at::Tensor ref = (scores.softmax(-1).matmul(v)).transpose(1, 2).reshape({b, t, h * d}).matmul(wo.t());
  auto ref_grads = torch::autograd::grad({ref}, {x2, wq, wk, wv, wo}, {g});
  EXPECT_LT(edkm::test::max_rel(y, ref), 1e-12);
  for (size_t i = 0; i < grads.size(); ++i) EXPECT_LT(edkm::test::max_rel(grads[i], ref_grads[i]), 1e-11) << i;
}

TEST(Llama, GroupedQueryAttentionEqualsMultiHeadWithRepeatedKV) {
  torch::manual_seed(2);
  auto gqa_cfg = small_config();
  edkm::LlamaAttention gqa(gqa_cfg);
  edkm::LlamaAttention mha(small_config().num_key_value_heads(4));
  {
    torch::NoGradGuard ng;
    mha->q_proj->weight.copy_(gqa->q_proj->weight);
    mha->o_proj->weight.copy_(gqa->o_proj->weight);
    // kv head j serves query heads 2j and 2j+1: repeat its 8 rows per query head.
    mha->k_proj->weight.copy_(gqa->k_proj->weight.view({2, 8, 32}).repeat_interleave(2, 0).reshape({32, 32}));
    mha->v_proj->weight.copy_(gqa->v_proj->weight.view({2, 8, 32}).repeat_interleave(2, 0).reshape({32, 32}));
  }
  const at::Tensor x = at::randn({3, 10, 32});
  auto [cos, sin] = edkm::functional::rotary_cos_sin(gqa_cfg, 10);
  EXPECT_LT(edkm::test::max_rel(gqa(x, cos, sin), mha(x, cos, sin)), 1e-6);
}

TEST(Llama, FusedSwiGLUEqualsPlainAndRMSNormMatchesFormula) {
  torch::manual_seed(3);
  edkm::LlamaMLP fused(small_config()), plain(small_config().fused_swiglu(false));
  {
    torch::NoGradGuard ng;
    for (auto& p : plain->named_parameters()) p.value().copy_(fused->named_parameters()[p.key()]);
  }
  const at::Tensor x = at::randn({2, 5, 32});
  const at::Tensor a = fused(x), b = plain(x);
  EXPECT_LT(edkm::test::max_rel(a, b), 1e-6);
  const at::Tensor g = at::randn_like(a);
  auto ga = torch::autograd::grad({a}, {fused->gate_proj->weight, fused->up_proj->weight}, {g});
  auto gb = torch::autograd::grad({b}, {plain->gate_proj->weight, plain->up_proj->weight}, {g});
  EXPECT_LT(edkm::test::max_rel(ga[0], gb[0]), 1e-5);
  EXPECT_LT(edkm::test::max_rel(ga[1], gb[1]), 1e-5);

  const at::Tensor w = at::randn({32});
  const at::Tensor ref = x / (x.square().mean(-1, true) + 1e-5).sqrt() * w;
  EXPECT_LT(edkm::test::max_rel(edkm::functional::rms_norm(x, w, 1e-5), ref), 1e-6);
}

TEST(Llama, CausalLMLossAndCausality) {
  torch::manual_seed(4);
  LlamaForCausalLM model(small_config());
  const at::Tensor x = tokens(2, 8, 50);
  const at::Tensor logits = model(x);
  const at::Tensor ref =
      at::cross_entropy_loss(logits.narrow(1, 0, 7).reshape({-1, 50}), x.narrow(1, 1, 7).reshape(-1));
  EXPECT_NEAR(edkm::functional::causal_lm_loss(logits, x).item<double>(), ref.item<double>(), 1e-6);
  // Changing the last token changes no earlier logits.
  at::Tensor x2 = x.clone();
  x2.index_put_({0, 7}, (x2.index({0, 7}) + 1) % 50);
  EXPECT_TRUE(at::allclose(model(x2).narrow(1, 0, 7), logits.narrow(1, 0, 7)));
}

// Checkpointed layers give bitwise the gradients of the plain model through DKM under a
// Palettizer, whether backward runs inside the scope or after it (the recompute must use the
// clustered weights, not the raw parameters the scope restored).
TEST(Llama, ActivationCheckpointingUnderPalettizerKeepsGradients) {
  torch::manual_seed(5);
  LlamaForCausalLM plain(small_config()), ckpt(small_config().checkpoint_layers(true));
  copy_params(ckpt, plain);
  const at::Tensor x = tokens(2, 12, 50);
  auto grads = [&](LlamaForCausalLM& m, bool backward_in_scope) {
    for (auto& p : m->parameters()) p.mutable_grad() = at::Tensor();
    edkm::Palettizer pal(m,
                         edkm::PalettizerOptions(edkm::DKMOptions(3).engine(edkm::Engine::kDense).weight_threshold(0)));
    at::Tensor loss;
    {
      auto scope = pal.clustered();
      loss = edkm::functional::causal_lm_loss(m(x), x);
      if (backward_in_scope) loss.backward();
    }
    if (!backward_in_scope) loss.backward();
    std::map<std::string, at::Tensor> out;
    for (const auto& p : m->named_parameters()) out[p.key()] = p.value().grad().clone();
    return out;
  };
  const auto a = grads(plain, true);
  for (bool inside : {true, false}) {
    const auto b = grads(ckpt, inside);
    for (const auto& [name, g] : a)
      EXPECT_TRUE(at::equal(b.at(name), g)) << name << (inside ? " (backward in the scope)" : " (after the scope)")
                                            << ": max rel diff " << edkm::test::max_rel(b.at(name), g);
  }
}

// ---- checkpoint files -----------------------------------------------------------------------------

TEST(LlamaIO, SaveLoadReproducesLogitsExactly) {
  torch::manual_seed(6);
  edkm::test::TempDir dir;
  LlamaForCausalLM model(small_config());
  edkm::save_hf_llama(model, dir.path("ckpt"));
  auto loaded = edkm::load_hf_llama(dir.path("ckpt"));
  const at::Tensor x = tokens(2, 9, 50);
  EXPECT_TRUE(at::equal(model(x), loaded(x)));
  EXPECT_EQ(loaded->config.to_json(), model->config.to_json());
  EXPECT_EQ(edkm::test::file_size(dir.path("ckpt/model.safetensors.index.json")), -1);
}

TEST(LlamaIO, Bf16FileLoadsAsTheRoundedWeights) {
  torch::manual_seed(7);
  edkm::test::TempDir dir;
  LlamaForCausalLM model(small_config());
  edkm::save_hf_llama(model, dir.path("bf16"), edkm::LlamaSaveOptions().dtype(at::kBFloat16));
  const auto file = edkm::load_safetensors(dir.path("bf16/model.safetensors"));
  EXPECT_EQ(file.tensors.at("lm_head.weight").scalar_type(), at::kBFloat16);
  auto loaded = edkm::load_hf_llama(dir.path("bf16"));  // fp32 model from a bf16 file
  {
    torch::NoGradGuard ng;
    for (auto& p : model->parameters()) p.copy_(p.to(at::kBFloat16).to(at::kFloat));
  }
  const at::Tensor x = tokens(1, 9, 50);
  EXPECT_TRUE(at::equal(model(x), loaded(x)));
  auto as_bf16 = edkm::load_hf_llama(dir.path("bf16"), edkm::LlamaLoadOptions().dtype(at::kBFloat16));
  EXPECT_EQ(as_bf16->model->norm->weight.scalar_type(), at::kBFloat16);
  EXPECT_EQ(as_bf16(x).sizes(), model(x).sizes());
}

TEST(LlamaIO, ShardedCheckpointWithIndexAndTiedEmbeddings) {
  torch::manual_seed(8);
  edkm::test::TempDir dir;
  LlamaForCausalLM model(small_config().tie_word_embeddings(true));
  edkm::save_hf_llama(model, dir.path("sharded"), edkm::LlamaSaveOptions().max_shard_bytes(20000));
  EXPECT_GT(edkm::test::file_size(dir.path("sharded/model.safetensors.index.json")), 0);
  int shards = 0;
  for (const auto& e : edkm::test::TempDir::entries_of(dir.path("sharded"))) shards += e.rfind("model-", 0) == 0;
  EXPECT_EQ(shards, 4);  // 20 kB shards: embedding + 4 attention projections, 3 MLP + norms, ...
  auto loaded = edkm::load_hf_llama(dir.path("sharded"));
  EXPECT_TRUE(loaded->config.tie_word_embeddings());
  const at::Tensor x = tokens(2, 5, 50);
  EXPECT_TRUE(at::equal(model(x), loaded(x)));
  // The first layer alone (the others' tensors are skipped).
  auto one = edkm::load_hf_llama(dir.path("sharded"), edkm::LlamaLoadOptions().num_layers(1));
  EXPECT_EQ(one->model->layers->size(), 1u);
}

TEST(LlamaIO, ParsesHuggingFaceConfigs) {
  const auto c = LlamaConfig::from_json(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "vocab_size": 32000, "rms_norm_eps": 1e-05, "max_position_embeddings": 4096,
    "tie_word_embeddings": false, "torch_dtype": "float16", "rope_scaling": null, "hidden_act": "silu"})");
  EXPECT_EQ(c.num_parameters(), 6738415616);  // LLaMA-2-7B
  EXPECT_EQ(c.max_position_embeddings(), 4096);
  EXPECT_EQ(LlamaConfig::llama_7b().num_parameters(), 6738415616);
  const auto l3 = LlamaConfig::from_json(R"({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_hidden_layers": 1, "vocab_size": 10, "num_key_value_heads": 1, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}})");
  EXPECT_EQ(l3.rope_scaling_factor(), 8.0);
  EXPECT_EQ(LlamaConfig::from_json(l3.to_json()).to_json(), l3.to_json());
  // Llama 3 scaling: the highest frequency is untouched, the lowest divided by the factor.
  auto [c0, s0] = edkm::functional::rotary_cos_sin(l3, 2);
  auto [c1, s1] = edkm::functional::rotary_cos_sin(LlamaConfig(l3).rope_scaling_factor(0), 2);
  EXPECT_FLOAT_EQ(s0[1][0].item<float>(), s1[1][0].item<float>());
  EXPECT_NEAR(std::asin(s0[1][7].item<double>()), std::asin(s1[1][7].item<double>()) / 8, 1e-7);
}

// transformers 5 nests rope_theta in rope_parameters: read there, not defaulted to 10000.
TEST(LlamaIO, ParsesTransformers5RopeParameters) {
  const std::string base = R"("model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "vocab_size": 49152,
    "head_dim": 64, "tie_word_embeddings": true, "attention_bias": false, "mlp_bias": false)";
  const auto tf5 =
      LlamaConfig::from_json("{" + base + R"(, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}})");
  EXPECT_EQ(tf5.rope_theta(), 100000.0);
  EXPECT_EQ(tf5.rope_scaling_factor(), 0.0);
  EXPECT_TRUE(tf5.tie_word_embeddings());
  EXPECT_EQ(tf5.resolved_head_dim(), 64);
  const auto tf4 = LlamaConfig::from_json("{" + base + R"(, "rope_theta": 100000, "rope_scaling": null})");
  EXPECT_EQ(tf4.to_json(), tf5.to_json());
  // Both places, equal: fine; different: refused with both names.
  EXPECT_EQ(LlamaConfig::from_json("{" + base + R"(, "rope_theta": 100000, "rope_parameters": {"rope_theta": 1e5}})")
                .rope_theta(),
            100000.0);
  edkm::test::expect_error(
      [&] { LlamaConfig::from_json("{" + base + R"(, "rope_theta": 10000, "rope_parameters": {"rope_theta": 1e5}})"); },
      {"rope_theta", "rope_parameters.rope_theta", "disagree"});
  // Llama 3 scaling inside rope_parameters.
  const auto l3 = LlamaConfig::from_json("{" + base + R"(, "rope_parameters": {"rope_type": "llama3",
    "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192}})");
  EXPECT_EQ(l3.rope_theta(), 500000.0);
  EXPECT_EQ(l3.rope_scaling_factor(), 32.0);
  EXPECT_EQ(LlamaConfig::from_json(l3.to_json()).to_json(), l3.to_json());
  // What we write carries rope_parameters for transformers 5 and rope_theta for transformers 4.
  const auto written = nlohmann::json::parse(l3.to_json());
  EXPECT_EQ(written["rope_parameters"]["rope_theta"].get<double>(), 500000.0);
  EXPECT_EQ(written["rope_parameters"]["rope_type"].get<std::string>(), "llama3");
  EXPECT_EQ(written["rope_theta"].get<double>(), 500000.0);
}

TEST(LlamaIO, RefusesConfigKeysThatChangeTheMath) {
  const std::string base = R"({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_hidden_layers": 1, "vocab_size": 10)";
  using edkm::test::expect_error;
  for (const char* type : {"linear", "dynamic", "yarn", "longrope"}) {
    expect_error(
        [&] { LlamaConfig::from_json(base + R"(, "rope_scaling": {"type": ")" + type + R"(", "factor": 2}})"); },
        {"rope type", type, "not supported"});
    expect_error(
        [&] {
          LlamaConfig::from_json(base + R"(, "rope_parameters": {"rope_type": ")" + type + R"(", "factor": 2}})");
        },
        {"rope type", type, "not supported"});
  }
  expect_error(
      [&] { LlamaConfig::from_json(base + R"(, "rope_parameters": {"rope_theta": 1e4, "mrope_section": [1]}})"); },
      {"rope_parameters.mrope_section", "not supported"});
  expect_error([&] { LlamaConfig::from_json(base + R"(, "rope_parameters": {"rope_theta": 1e4, "factor": 4}})"); },
               {"rope_parameters.factor", "not supported"});
  expect_error([&] { LlamaConfig::from_json(base + R"(, "partial_rotary_factor": 0.5})"); }, {"partial_rotary_factor"});
  expect_error([&] { LlamaConfig::from_json(base + R"(, "quantization_config": {"quant_method": "gptq"}})"); },
               {"quantization_config"});
  expect_error(
      [&] {
        LlamaConfig::from_json(base + R"(, "rope_parameters": {"full_attention": {"rope_theta": 1e6},
          "sliding_attention": {"rope_theta": 1e4}}})");
      },
      {"per layer type"});
  expect_error([&] { LlamaConfig::from_json(base + R"(, "rope_parameters": {"rope_theta": "big"}})"); },
               {"rope_parameters.rope_theta", "number"});
  expect_error([&] { LlamaConfig::from_json(base + R"(, "rope_scaling": {"rope_type": "llama3"}})"); }, {"factor"});
  expect_error([&] { LlamaConfig::from_json(base + R"(, "hidden_act": "gelu"})"); }, {"hidden_act", "gelu"});
  expect_error([&] { LlamaConfig::from_json(base + R"(, "model_type": "mistral"})"); }, {"model_type", "mistral"});
  // Keys that do not change the math are accepted.
  EXPECT_NO_THROW(LlamaConfig::from_json(base + R"(, "pretraining_tp": 1, "use_cache": true, "bos_token_id": 1,
    "dtype": "bfloat16", "attention_dropout": 0.0, "rope_scaling": null, "rope_parameters": null})"));
}

void write(const std::string& path, const std::string& text) { edkm::write_text_file(path, text); }

TEST(LlamaIO, RejectsMalformedCheckpoints) {
  torch::manual_seed(9);
  edkm::test::TempDir dir;
  LlamaForCausalLM model(small_config());
  const std::string d = dir.path("c");
  edkm::save_hf_llama(model, d);
  const std::string config = edkm::read_text_file(d + "/config.json");
  const auto good = edkm::load_safetensors(d + "/model.safetensors");
  using edkm::test::expect_error;

  // Missing tensor.
  auto missing = good;
  missing.tensors.erase("model.layers.1.mlp.up_proj.weight");
  edkm::save_safetensors(d + "/model.safetensors", missing);
  expect_error([&] { edkm::load_hf_llama(d); }, {"model.layers.1.mlp.up_proj.weight", "missing"});
  // Wrong shape.
  auto wrong = good;
  wrong.tensors["model.norm.weight"] = at::ones({31});
  edkm::save_safetensors(d + "/model.safetensors", wrong);
  expect_error([&] { edkm::load_hf_llama(d); }, {"model.norm.weight", "shape", "[31]", "[32]"});
  // Unknown tensor.
  auto extra = good;
  extra.tensors["model.layers.0.mlp.extra.weight"] = at::ones({2});
  edkm::save_safetensors(d + "/model.safetensors", extra);
  expect_error([&] { edkm::load_hf_llama(d); }, {"unexpected tensor", "model.layers.0.mlp.extra.weight"});
  // Truncated file.
  edkm::save_safetensors(d + "/model.safetensors", good);
  {
    const std::string bytes = edkm::read_text_file(d + "/model.safetensors");
    write(d + "/model.safetensors", bytes.substr(0, bytes.size() - 100));
  }
  expect_error([&] { edkm::load_hf_llama(d); }, {"model.safetensors"});
  edkm::save_safetensors(d + "/model.safetensors", good);
  EXPECT_NO_THROW(edkm::load_hf_llama(d));

  // Bad config: not JSON, missing key, wrong type, unsupported model, bad heads.
  write(d + "/config.json", "{\"hidden_size\": 32,");
  expect_error([&] { edkm::load_hf_llama(d); }, {"config.json", "not valid JSON"});
  write(d + "/config.json", "{\"rope_scaling\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  expect_error([&] { edkm::load_hf_llama(d); }, {"config.json", "nested deeper than 64"});
  write(d + "/config.json",
        R"({"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4, "vocab_size": 50})");
  expect_error([&] { edkm::load_hf_llama(d); }, {"num_hidden_layers", "missing"});
  write(d + "/config.json", R"({"hidden_size": "32", "intermediate_size": 48, "num_attention_heads": 4,
    "num_hidden_layers": 2, "vocab_size": 50})");
  expect_error([&] { edkm::load_hf_llama(d); }, {"hidden_size", "wrong type"});
  write(d + "/config.json", R"({"model_type": "gpt2", "hidden_size": 32})");
  expect_error([&] { edkm::load_hf_llama(d); }, {"gpt2", "not supported"});
  write(d + "/config.json", R"({"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
    "num_key_value_heads": 3, "num_hidden_layers": 2, "vocab_size": 50})");
  expect_error([&] { edkm::load_hf_llama(d); }, {"num_key_value_heads", "divide"});
  write(d + "/config.json", config);

  // An index pointing to a missing shard; a bad index; no weights at all.
  write(d + "/model.safetensors.index.json",
        R"({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}})");
  expect_error([&] { edkm::load_hf_llama(d); }, {"model-00001-of-00002.safetensors", "missing"});
  write(d + "/model.safetensors.index.json", R"({"weight_map": {"model.norm.weight": "../escape.safetensors"}})");
  expect_error([&] { edkm::load_hf_llama(d); }, {"not a file name"});
  write(d + "/model.safetensors.index.json", R"({"weights": {}})");
  expect_error([&] { edkm::load_hf_llama(d); }, {"weight_map"});
  ::unlink((d + "/model.safetensors.index.json").c_str());
  ::unlink((d + "/model.safetensors").c_str());
  expect_error([&] { edkm::load_hf_llama(d); }, {"no weights"});
  expect_error([&] { edkm::load_hf_llama(dir.path("nothing")); }, {"no config.json"});
}

}  // namespace
