// LlamaRuntime (edkm/models/llama_runtime.h): the KV-cache forward against the model's full forward,
// token by token and in chunks; a palettized checkpoint run packed against the decompressed model
// (logits and greedy tokens); sampling options (top-k, repetition penalty, stop tokens against a
// reference loop); bad input.
#include <ATen/record_function.h>
#include <edkm/io/checkpoint.h>
#include <edkm/models/llama.h>
#include <edkm/models/llama_runtime.h>
#include <edkm/palettizer/palettizer.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <set>
#include <tuple>

#include "test_util.h"

namespace {

using edkm::LlamaConfig;
using edkm::LlamaForCausalLM;
using edkm::LlamaRuntime;

LlamaConfig runtime_config(bool tied) {
  return LlamaConfig::tiny()
      .vocab_size(61)
      .hidden_size(32)
      .intermediate_size(48)
      .num_attention_heads(4)
      .num_key_value_heads(2)
      .max_position_embeddings(40)
      .tie_word_embeddings(tied);
}

std::vector<int64_t> greedy_reference(LlamaForCausalLM& m, std::vector<int64_t> ids, int64_t n) {
  torch::NoGradGuard ng;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t next = m(at::tensor(ids, at::kLong).unsqueeze(0)).select(1, -1).argmax(-1).item<int64_t>();
    ids.push_back(next);
    out.push_back(next);
  }
  return out;
}

// A palettized checkpoint as the runtime tests use it: Linears at 3 bits, 8 rows per LUT; embedding
// and head at 6 bits per tensor.
edkm::CompressedCheckpoint palettized(LlamaForCausalLM& model) {
  auto linear = edkm::DKMOptions(3)
                    .engine(edkm::Engine::kDense)
                    .weight_threshold(0)
                    .granularity(edkm::Granularity::kPerGroupedChannel)
                    .group_size(8);
  auto head = edkm::DKMOptions(6).engine(edkm::Engine::kDense).weight_threshold(0);
  edkm::Palettizer pal(model,
                       edkm::PalettizerOptions(linear).module_type("Embedding", head).module_name("lm_head", head));
  {
    auto scope = pal.clustered();
    torch::NoGradGuard ng;
    model(at::randint(61, {1, 8}, at::kLong));
  }
  pal.finalize();
  return pal.compressed_checkpoint();
}

TEST(LlamaRuntime, CachedForwardEqualsTheFullForward) {
  for (bool tied : {false, true}) {
    torch::manual_seed(3);
    LlamaForCausalLM model(runtime_config(tied));
    model->eval();
    LlamaRuntime rt(model);
    const at::Tensor ids = at::randint(61, {23}, at::kLong);
    at::Tensor full;
    {
      torch::NoGradGuard ng;
      full = model(ids.unsqueeze(0)).squeeze(0);
    }
    auto cache = rt.new_cache();
    EXPECT_LE(edkm::test::max_rel(rt.forward(ids, cache), full), 1e-5) << "one chunk";
    auto last_cache = rt.new_cache();  // Logits::kLast: the same cache, the last row only
    const at::Tensor last = rt.forward(ids, last_cache, LlamaRuntime::Logits::kLast);
    EXPECT_EQ(last.sizes(), (std::vector<int64_t>{1, full.size(1)}));
    EXPECT_LE(edkm::test::max_rel(last, full.narrow(0, 22, 1)), 1e-5);
    EXPECT_EQ(last_cache.length, 23);
    EXPECT_TRUE(last_cache.k[0].narrow(2, 0, 23).equal(cache.k[0].narrow(2, 0, 23)));
    for (const std::vector<int64_t>& chunks : {std::vector<int64_t>(23, 1), std::vector<int64_t>{5, 1, 7, 10}}) {
      auto c = rt.new_cache(30);
      int64_t at = 0;
      for (int64_t n : chunks) {
        const at::Tensor got = rt.forward(ids.narrow(0, at, n), c);
        EXPECT_LE(edkm::test::max_rel(got, full.narrow(0, at, n)), 1e-5) << "chunk at " << at << ", tied " << tied;
        at += n;
      }
      EXPECT_EQ(c.length, 23);
    }
  }
}

TEST(LlamaRuntime, PalettizedCheckpointRunsPackedAndGeneratesTheDecompressedModelsTokens) {
  for (bool tied : {true, false}) {
    torch::manual_seed(4);
    LlamaForCausalLM model(runtime_config(tied));
    const edkm::CompressedCheckpoint ckpt = palettized(model);
    LlamaRuntime rt(model->config, ckpt);
    EXPECT_EQ(rt.packed_layers(), 2 * 7 + 1 + (tied ? 0 : 1));  // q, k, v and gate, up stacked, counted apart
    LlamaForCausalLM dense(model->config);                      // the decompressed model
    edkm::load_tensors(*dense, ckpt.decompress());
    dense->eval();
    LlamaRuntime dense_rt(dense);
    EXPECT_LT(rt.weight_bytes() * 3, dense_rt.weight_bytes()) << "packed weights";
    const at::Tensor ids = at::randint(61, {12}, at::kLong);
    auto c1 = rt.new_cache();
    at::Tensor want;
    {
      torch::NoGradGuard ng;
      want = dense(ids.unsqueeze(0)).squeeze(0);
    }
    EXPECT_LE(edkm::test::max_rel(rt.forward(ids, c1), want), 1e-5);
    const std::vector<int64_t> prompt{1, 2, 3, 4, 5};
    const auto got = rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(20));
    EXPECT_EQ(got, greedy_reference(dense, prompt, 20)) << "tied " << tied;
  }
}

TEST(LlamaRuntime, SamplingOptions) {
  torch::manual_seed(6);
  LlamaForCausalLM model(runtime_config(true));
  LlamaRuntime rt(model);
  const std::vector<int64_t> prompt{7, 8, 9};
  const auto greedy = rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(10));
  // top_p that keeps only the most likely token is greedy whatever the temperature.
  EXPECT_EQ(rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(10).temperature(5.0).top_p(1e-9)), greedy);
  const auto o = edkm::GenerationOptions().max_new_tokens(10).temperature(1.5).seed(42);
  const auto a = rt.generate(prompt, o), b = rt.generate(prompt, o);
  EXPECT_EQ(a, b) << "same seed, same tokens";
  EXPECT_NE(a, greedy) << "a hot temperature samples";
  for (int64_t t : a) EXPECT_TRUE(t >= 0 && t < 61);
  // eos stops generation and is not returned; the context bounds it.
  size_t first_new = 1;  // the first sampled token not sampled before
  while (first_new < a.size() && std::find(a.begin(), a.begin() + first_new, a[first_new]) != a.begin() + first_new)
    ++first_new;
  ASSERT_LT(first_new, a.size());
  auto with_eos = o;
  const auto stop = rt.generate(prompt, with_eos.eos_id(a[first_new]));
  EXPECT_EQ(stop, std::vector<int64_t>(a.begin(), a.begin() + first_new));
  // 40 positions: 3 prompt tokens and 37 generated ones fed back, then a last one predicted.
  EXPECT_EQ(rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(100)).size(), 38u);
}

// Top-k, the repetition penalty and stop tokens, against a reference loop written from their
// definitions (Hugging Face's TopKLogitsWarper and RepetitionPenaltyLogitsProcessor) on the
// model's full forward.
TEST(LlamaRuntime, TopKRepetitionPenaltyAndStopTokens) {
  torch::manual_seed(8);
  LlamaForCausalLM model(runtime_config(true));
  LlamaRuntime rt(model);
  const std::vector<int64_t> prompt{7, 8, 9, 7};
  auto logits_of = [&](const std::vector<int64_t>& ids) {
    torch::NoGradGuard ng;
    return model(at::tensor(ids, at::kLong).unsqueeze(0)).select(1, -1).squeeze(0).to(at::kDouble);
  };
  // Greedy with a penalty: the reference applies it to every token of prompt + output so far.
  for (const double penalty : {1.3, 0.7, 50.0}) {
    std::vector<int64_t> ids = prompt, want;
    for (int i = 0; i < 12; ++i) {
      at::Tensor l = logits_of(ids);
      std::vector<int64_t> distinct(ids);
      std::sort(distinct.begin(), distinct.end());
      distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
      for (const int64_t t : distinct) {
        const double v = l[t].item<double>();
        l[t] = v > 0 ? v / penalty : v * penalty;
      }
      want.push_back(l.argmax().item<int64_t>());
      ids.push_back(want.back());
    }
    EXPECT_EQ(rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(12).repetition_penalty(penalty)), want)
        << "penalty " << penalty;
  }
  EXPECT_NE(rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(12).repetition_penalty(50.0)),
            rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(12)))
      << "a strong penalty changes the greedy text";
  // top_k = 1 is greedy whatever the temperature; top_k = 3 only ever samples the 3 most likely.
  const auto greedy = rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(8));
  EXPECT_EQ(rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(8).temperature(4.0).top_k(1).seed(3)), greedy);
  const at::Tensor first = logits_of(prompt);
  const at::Tensor top3 = std::get<1>(first.topk(3));
  std::set<int64_t> drawn;
  for (uint64_t seed = 0; seed < 60; ++seed) {
    const auto a =
        rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(1).temperature(3.0).top_k(3).seed(seed));
    ASSERT_EQ(a.size(), 1u);
    EXPECT_TRUE((top3 == a[0]).any().item<bool>()) << "token " << a[0] << " outside the top 3";
    drawn.insert(a[0]);
  }
  EXPECT_EQ(drawn.size(), 3u) << "a hot temperature draws each of the top 3";
  // Without top_k the same temperature draws more than those 3.
  drawn.clear();
  for (uint64_t seed = 0; seed < 60; ++seed)
    drawn.insert(rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(1).temperature(3.0).seed(seed))[0]);
  EXPECT_GT(drawn.size(), 3u);
  // Stop tokens end generation before their first occurrence, like eos_id.
  const auto at = std::find(greedy.begin(), greedy.end(), greedy.back());
  EXPECT_EQ(rt.generate(prompt, edkm::GenerationOptions().max_new_tokens(8).stop_ids({60, greedy.back()})),
            std::vector<int64_t>(greedy.begin(), at));
}

// A conversation continued in one cache (each turn feeding only what the cache lacks, the cache
// grown from 2 positions) generates what generating from the whole sequence does, with the
// repetition penalty seeing the earlier turns.
TEST(LlamaRuntime, ContinuingACacheEqualsGeneratingFromTheWholeSequence) {
  torch::manual_seed(9);
  LlamaForCausalLM model(runtime_config(true));
  LlamaRuntime rt(model);
  const auto o = edkm::GenerationOptions().max_new_tokens(5).repetition_penalty(1.5);
  auto cache = rt.new_cache(2);
  std::vector<int64_t> conversation{3, 4, 5};
  for (const std::vector<int64_t>& turn : {std::vector<int64_t>{}, {11, 12}, {13}}) {
    conversation.insert(conversation.end(), turn.begin(), turn.end());
    const auto want = rt.generate(conversation, o);  // a fresh cache, the whole sequence
    ASSERT_LE(cache.length, static_cast<int64_t>(conversation.size()));
    EXPECT_TRUE(std::equal(cache.tokens.begin(), cache.tokens.end(), conversation.begin()));
    const std::vector<int64_t> input(conversation.begin() + cache.length, conversation.end());
    const auto got = rt.generate(input, o, cache);
    EXPECT_EQ(got, want) << "turn after " << conversation.size() << " tokens";
    ASSERT_FALSE(got.empty());
    conversation.insert(conversation.end(), got.begin(), got.end());
    EXPECT_EQ(cache.length, static_cast<int64_t>(conversation.size()) - 1) << "all but the last generated id";
    EXPECT_EQ(cache.tokens.size(), static_cast<size_t>(cache.length));
  }
  EXPECT_GE(cache.k[0].size(2), cache.length);
  // A cache whose ids do not match its length (edited by hand) is refused.
  cache.tokens.pop_back();
  edkm::test::expect_error([&] { rt.generate({1}, o, cache); }, {"token ids"});
}

// A bf16 key/value cache: token by token (the written-out decode step reading bf16 rows) and in
// one chunk (LibTorch's attention on the cache converted back) agree to fp32 rounding, both round
// the keys and values, so they differ from the fp32 cache but little; generate takes it.
TEST(LlamaRuntime, Bf16CacheAgreesAcrossPathsAndStaysCloseToFp32) {
  torch::manual_seed(10);
  LlamaForCausalLM model(runtime_config(false));
  LlamaRuntime rt(model);
  const at::Tensor ids = at::randint(61, {17}, at::kLong);
  auto c32 = rt.new_cache(20);
  auto c16 = rt.new_cache(20, at::kBFloat16);
  EXPECT_EQ(c16.k[0].scalar_type(), at::kBFloat16);
  const at::Tensor f32 = rt.forward(ids, c32), chunk = rt.forward(ids, c16);
  auto steps_cache = rt.new_cache(20, at::kBFloat16);
  std::vector<at::Tensor> rows;
  for (int64_t i = 0; i < 17; ++i) rows.push_back(rt.forward(ids.narrow(0, i, 1), steps_cache));
  const at::Tensor steps = at::cat(rows, 0);
  EXPECT_LE(edkm::test::max_rel(steps, chunk), 1e-5) << "decode step against one chunk, both bf16";
  const double off = edkm::test::max_rel(chunk, f32);
  EXPECT_GT(off, 0.0) << "bf16 rounds the cache";
  EXPECT_LT(off, 3e-2);
  const auto o = edkm::GenerationOptions().max_new_tokens(6);
  auto o16 = o;
  EXPECT_EQ(rt.generate({3, 4, 5}, o16.cache_dtype(at::kBFloat16)).size(), 6u);
  edkm::test::expect_error([&] { rt.new_cache(4, at::kHalf); }, {"fp32 or bf16"});
}

// Long contexts: the decode step splits the keys into parts (flash-decoding) and runs the query
// heads of a key / value head together; each step's logits against the full forward, head_dim 64
// (the vector blocks) and 48 (a 16-wide block, no 32), groups of 3 and 1, fp32 and bf16 caches,
// over the position where the split starts (128 keys with 2 key / value heads).
TEST(LlamaRuntime, LongContextDecodeSplitsTheKeysAndEqualsTheFullForward) {
  const int threads = at::get_num_threads();
  at::set_num_threads(2);  // the split depends on the threads
  for (const auto& [hidden, heads, kv] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{384, 6, 2}, {96, 2, 2}}) {
    torch::manual_seed(hidden);
    LlamaForCausalLM model(LlamaConfig::tiny()
                               .vocab_size(61)
                               .hidden_size(hidden)
                               .intermediate_size(64)
                               .num_hidden_layers(1)
                               .num_attention_heads(heads)
                               .num_key_value_heads(kv)
                               .max_position_embeddings(320));
    model->eval();
    LlamaRuntime rt(model), general(model);
    general.fast_decode(false);  // LibTorch's attention, a group's query heads as rows of one block
    const int64_t n = 300;
    const at::Tensor ids = at::randint(61, {n}, at::kLong);
    at::Tensor full;
    {
      torch::NoGradGuard ng;
      full = model(ids.unsqueeze(0)).squeeze(0);
    }
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
      auto prompt = rt.new_cache(n, dtype);
      const at::Tensor first = rt.forward(ids.narrow(0, 0, 100), prompt);
      auto steps = rt.new_cache(n, dtype);
      rt.forward(ids.narrow(0, 0, 100), steps);
      auto general_steps = general.new_cache(n, dtype);
      general.forward(ids.narrow(0, 0, 100), general_steps);
      std::vector<at::Tensor> rows, general_rows;
      for (int64_t i = 100; i < n; ++i) {
        rows.push_back(rt.forward(ids.narrow(0, i, 1), steps));
        general_rows.push_back(general.forward(ids.narrow(0, i, 1), general_steps));
      }
      const at::Tensor got = at::cat(rows, 0);
      // fp32: the two paths' roundings. bf16: their keys can round to neighbouring bf16 values (the
      // rotary's fp32 products differ in the last bit, then one bf16 step is 2^-8 relative): 1e-3.
      EXPECT_LE(edkm::test::max_rel(at::cat(general_rows, 0), got), dtype == at::kFloat ? 1e-5 : 1e-3)
          << "general path, hidden " << hidden << (dtype == at::kFloat ? ", fp32" : ", bf16");
      const std::string what = "hidden " + std::to_string(hidden) + (dtype == at::kFloat ? ", fp32" : ", bf16");
      if (dtype == at::kFloat) {
        EXPECT_LE(edkm::test::max_rel(got, full.narrow(0, 100, n - 100)), 1e-5) << what;
      } else {
        // bf16 keys and values: against the same cache filled by one chunk.
        auto chunk = rt.new_cache(n, dtype);
        const at::Tensor all = rt.forward(ids, chunk);
        EXPECT_LE(edkm::test::max_rel(got, all.narrow(0, 100, n - 100)), 1e-5) << what;
      }
      EXPECT_TRUE(first.isfinite().all().item<bool>()) << what;
    }
  }
  at::set_num_threads(threads);
}

// Calls of LibTorch's scaled_dot_product_attention on this thread while `f` runs (the general path
// uses it; the written-out decode step does not).
template <class F>
int64_t attention_calls(F&& f) {
  static thread_local int64_t calls = 0;
  calls = 0;
  const auto handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback([](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
        if (std::string(fn.name()) == "aten::scaled_dot_product_attention") ++calls;
        return nullptr;
      }));
  f();
  at::removeCallback(handle);
  return calls;
}

// Token by token through the general path (LibTorch operations and lut_linear: what a CUDA runtime
// runs) against the written-out CPU decode step: packed and dense, fp32 and bf16 caches.
TEST(LlamaRuntime, GeneralPathDecodesAsTheWrittenOutStep) {
  torch::manual_seed(12);
  LlamaForCausalLM model(runtime_config(false));
  const edkm::CompressedCheckpoint ckpt = palettized(model);
  LlamaForCausalLM dense(model->config);
  edkm::load_tensors(*dense, ckpt.decompress());
  dense->eval();
  const at::Tensor ids = at::randint(61, {14}, at::kLong);
  for (bool packed : {true, false}) {
    LlamaRuntime fast = packed ? LlamaRuntime(model->config, ckpt) : LlamaRuntime(dense);
    LlamaRuntime general = packed ? LlamaRuntime(model->config, ckpt) : LlamaRuntime(dense);
    general.fast_decode(false);
    EXPECT_EQ(general.device(), c10::Device(at::kCPU));
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
      auto a = fast.new_cache(20, dtype), b = general.new_cache(20, dtype);
      fast.forward(ids.narrow(0, 0, 4), a);
      general.forward(ids.narrow(0, 0, 4), b);
      for (int64_t i = 4; i < 14; ++i) {
        at::Tensor want, got;
        EXPECT_EQ(attention_calls([&] { want = fast.forward(ids.narrow(0, i, 1), a); }), 0);
        EXPECT_EQ(attention_calls([&] { got = general.forward(ids.narrow(0, i, 1), b); }), 2) << "one per layer";
        EXPECT_LE(edkm::test::max_rel(got, want), 1e-5) << "packed " << packed << ", step " << i;
      }
      EXPECT_EQ(b.tokens, a.tokens);
    }
    const auto o = edkm::GenerationOptions().max_new_tokens(12);
    EXPECT_EQ(general.generate({3, 1, 4}, o), fast.generate({3, 1, 4}, o)) << "packed " << packed;
  }
}

// step_graphs(true): one-token steps whose position is a device tensor (rotary rows picked, keys
// and values written by index, a bucket of 256 keys attended with the later ones masked; on a GPU
// replayed as CUDA graphs, here run directly) against the written-out step, across the first
// bucket's end, fp32 and bf16 caches, and after the cache regrows (its graphs made anew).
TEST(LlamaRuntime, PositionStepsAcrossBucketsDecodeAsTheWrittenOutStep) {
  torch::manual_seed(21);
  LlamaForCausalLM model(LlamaConfig::tiny()
                             .vocab_size(61)
                             .hidden_size(64)
                             .intermediate_size(48)
                             .num_hidden_layers(2)
                             .num_attention_heads(4)
                             .num_key_value_heads(2)
                             .max_position_embeddings(600));
  model->eval();
  LlamaRuntime fast(model), graphs(model), general(model);
  graphs.step_graphs(true);
  general.fast_decode(false);  // the same LibTorch operations, positions given by narrow
  const at::Tensor ids = at::randint(61, {270}, at::kLong);
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    auto a = fast.new_cache(300, dtype), b = graphs.new_cache(300, dtype), c = general.new_cache(300, dtype);
    fast.forward(ids.narrow(0, 0, 250), a);
    graphs.forward(ids.narrow(0, 0, 250), b);
    general.forward(ids.narrow(0, 0, 250), c);
    EXPECT_FALSE(b.graphs) << "a prompt is not a one-token step";
    for (int64_t i = 250; i < 270; ++i) {
      if (i == 262) {  // regrow both: the captured storage is gone
        fast.reserve(a, 400);
        graphs.reserve(b, 400);
        general.reserve(c, 400);
      }
      general.forward(ids.narrow(0, i, 1), c);
      at::Tensor want, got;
      EXPECT_EQ(attention_calls([&] { want = fast.forward(ids.narrow(0, i, 1), a); }), 0);
      EXPECT_EQ(attention_calls([&] { got = graphs.forward(ids.narrow(0, i, 1), b); }), 2);
      EXPECT_LE(edkm::test::max_rel(got, want), 1e-5) << "step " << i << (dtype == at::kFloat ? ", fp32" : ", bf16");
      ASSERT_TRUE(b.graphs);
    }
    EXPECT_EQ(b.tokens, a.tokens);
    EXPECT_EQ(b.length, 270);
    // Layer 0's keys and values come before any attention: bit for bit. Later layers' follow an
    // attention over the masked bucket, summed in another order than over the positions so far.
    EXPECT_TRUE(b.k[0].narrow(2, 0, 270).equal(c.k[0].narrow(2, 0, 270)) &&
                b.v[0].narrow(2, 0, 270).equal(c.v[0].narrow(2, 0, 270)))
        << "keys and values written by index as by narrow";
    if (dtype == at::kFloat) EXPECT_LE(edkm::test::max_rel(b.k[1], c.k[1]), 1e-5);
  }
  const auto o = edkm::GenerationOptions().max_new_tokens(10);
  EXPECT_EQ(graphs.generate({5, 6, 7}, o), fast.generate({5, 6, 7}, o));
}

// LlamaRuntime::random: the config's shapes, packed or dense, with the bytes that follow from them;
// it decodes (finite logits) and its options are checked by name.
TEST(LlamaRuntime, RandomWeightsHaveTheConfigsShapesAndBytes) {
  for (bool tied : {false, true}) {
    const LlamaConfig c = runtime_config(tied).num_hidden_layers(2);
    const int64_t h = 32, mi = 48, kv = 2 * 8, vocab = 61;
    const int64_t params_per_layer = h * h * 2 + h * kv * 2 + 3 * h * mi;  // q, o; k, v; gate, up, down
    const int64_t params = 2 * params_per_layer + vocab * h * (tied ? 1 : 2), norms = (2 * 2 + 1) * h * 4;
    torch::manual_seed(1);
    LlamaRuntime f32 = LlamaRuntime::random(c, edkm::RandomWeights().bits(0));
    EXPECT_EQ(f32.weight_bytes(), params * 4 + norms);
    EXPECT_EQ(f32.decode_bytes(), f32.weight_bytes() - (tied ? 0 : vocab * h * 4));
    EXPECT_EQ(LlamaRuntime::random(c, edkm::RandomWeights().dense_dtype(at::kBFloat16)).weight_bytes(),
              params * 2 + norms);
    // 61 rows: one LUT per tensor for the embedding and the head.
    LlamaRuntime p3 = LlamaRuntime::random(c, edkm::RandomWeights().bits(3).rows_per_lut(0));
    EXPECT_EQ(p3.packed_layers(), 2 * 7 + 1 + (tied ? 0 : 1));
    // Each weight: its packed stream + 16 pad bytes + one 8-entry fp32 LUT. gate and up (48 rows
    // each) are stacked, one stream with two LUTs; q (32 rows) and k, v (16) are not: one LUT per
    // tensor of other row counts.
    auto bytes = [](int64_t n) { return (n * 3 + 7) / 8 + 16 + 32; };
    const int64_t layer = 2 * bytes(h * h) + 2 * bytes(kv * h) + bytes(2 * mi * h) + 32 + bytes(mi * h);
    EXPECT_EQ(p3.weight_bytes(), 2 * layer + bytes(vocab * h) * (tied ? 1 : 2) + norms) << "tied " << tied;
    for (LlamaRuntime* rt : {&f32, &p3}) {
      auto cache = rt->new_cache(12);
      at::Tensor logits = rt->forward(at::tensor(std::vector<int64_t>{1, 2, 3}, at::kLong), cache);
      for (int64_t t = 0; t < 4; ++t) logits = rt->forward(at::tensor(std::vector<int64_t>{t}, at::kLong), cache);
      EXPECT_TRUE(logits.isfinite().all().item<bool>());
      EXPECT_GT(logits.std().item<double>(), 0);
    }
  }
  using edkm::test::expect_error;
  const LlamaConfig c = runtime_config(false);
  expect_error([&] { LlamaRuntime::random(c, edkm::RandomWeights().bits(9)); }, {"bits must be in 0..8"});
  expect_error([&] { LlamaRuntime::random(c, edkm::RandomWeights().dense_dtype(at::kInt)); }, {"dense_dtype", "Int"});
  expect_error([&] { LlamaRuntime::random(c, edkm::RandomWeights().bits(4).rows_per_lut(16)); },
               {"rows_per_lut 16", "61 rows"});
}

// The CUDA runtime (general path, CUDA LUT kernels) against the CPU one on a palettized checkpoint:
// logits of a prompt and of each step, greedy tokens, fp32 and bf16 caches; ids given on the CPU.
TEST(LlamaRuntime, CudaDecodesAsTheCpu) {
  EDKM_SKIP_WITHOUT_GPU();
  torch::manual_seed(13);
  LlamaForCausalLM model(runtime_config(false));
  const edkm::CompressedCheckpoint ckpt = palettized(model);
  LlamaRuntime cpu(model->config, ckpt);
  LlamaRuntime gpu(model->config, ckpt);
  EXPECT_FALSE(gpu.step_graphs()) << "graphs are for CUDA devices";
  gpu.to(at::kCUDA);
  EXPECT_TRUE(gpu.device().is_cuda());
  EXPECT_TRUE(gpu.step_graphs()) << "on by default on a CUDA device";
  gpu.step_graphs(false);  // the operations launched one by one (CudaStepGraphsDecodeAsTheCpu: the graphs)
  EXPECT_FALSE(gpu.to(at::kCPU).to(at::kCUDA).step_graphs()) << "an explicit choice holds across to()";
  EXPECT_EQ(gpu.weight_bytes(), cpu.weight_bytes());
  const at::Tensor ids = at::randint(61, {16}, at::kLong);
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    auto a = cpu.new_cache(20, dtype), b = gpu.new_cache(20, dtype);
    EXPECT_TRUE(b.k[0].is_cuda() && b.cos.is_cuda());
    EXPECT_LE(edkm::test::max_rel(gpu.forward(ids.narrow(0, 0, 6), b).cpu(), cpu.forward(ids.narrow(0, 0, 6), a)),
              1e-4);
    for (int64_t i = 6; i < 16; ++i) {
      const at::Tensor got = gpu.forward(ids.narrow(0, i, 1), b);
      EXPECT_TRUE(got.is_cuda());
      EXPECT_LE(edkm::test::max_rel(got.cpu(), cpu.forward(ids.narrow(0, i, 1), a)), 1e-4) << "step " << i;
    }
  }
  const auto o = edkm::GenerationOptions().max_new_tokens(20);
  EXPECT_EQ(gpu.generate({1, 2, 3, 4, 5}, o), cpu.generate({1, 2, 3, 4, 5}, o));
  auto host_cache = cpu.new_cache(8);
  edkm::test::expect_error([&] { gpu.forward(ids.narrow(0, 0, 2), host_cache); }, {"the cache is on cpu", "cuda:0"});
  EXPECT_EQ(gpu.to(at::kCPU).generate({1, 2, 3, 4, 5}, o), cpu.generate({1, 2, 3, 4, 5}, o)) << "moved back";
  // Made on "cuda" (no index): the runtime names the device as its tensors and caches do ("cuda:0");
  // the first GPU run refused its own caches.
  for (const int bits : {0, 3}) {
    LlamaRuntime rnd =
        LlamaRuntime::random(runtime_config(false), edkm::RandomWeights().bits(bits).rows_per_lut(0).device(at::kCUDA));
    EXPECT_EQ(rnd.device(), at::empty({0}, at::kCUDA).device());
    auto cache = rnd.new_cache(8);
    EXPECT_TRUE(rnd.forward(ids.narrow(0, 0, 3), cache).isfinite().all().item<bool>()) << bits << " bits";
  }
}

// The CUDA graphs of one-token steps against the CPU: past a bucket's end (positions 250..269),
// fp32 and bf16 caches, greedy tokens; a step's logits stay the caller's after the next replay.
TEST(LlamaRuntime, CudaStepGraphsDecodeAsTheCpu) {
  EDKM_SKIP_WITHOUT_GPU();
  torch::manual_seed(22);
  LlamaForCausalLM model(runtime_config(false).num_hidden_layers(2).max_position_embeddings(600));
  const edkm::CompressedCheckpoint ckpt = palettized(model);
  LlamaRuntime cpu(model->config, ckpt);
  LlamaRuntime gpu(model->config, ckpt);
  gpu.to(at::kCUDA).step_graphs(true);
  const at::Tensor ids = at::randint(61, {270}, at::kLong);
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    auto a = cpu.new_cache(300, dtype), b = gpu.new_cache(300, dtype);
    cpu.forward(ids.narrow(0, 0, 250), a);
    gpu.forward(ids.narrow(0, 0, 250), b);
    at::Tensor previous;
    for (int64_t i = 250; i < 270; ++i) {
      const at::Tensor got = gpu.forward(ids.narrow(0, i, 1), b), want = cpu.forward(ids.narrow(0, i, 1), a);
      EXPECT_TRUE(got.is_cuda());
      EXPECT_LE(edkm::test::max_rel(got.cpu(), want), 1e-4) << "step " << i;
      if (previous.defined()) EXPECT_FALSE(previous.equal(got)) << "a returned step overwritten by the next";
      previous = got;
    }
  }
  const auto o = edkm::GenerationOptions().max_new_tokens(20);
  EXPECT_EQ(gpu.generate({1, 2, 3, 4, 5}, o), cpu.generate({1, 2, 3, 4, 5}, o));
}

TEST(LlamaRuntime, BadInputIsRefusedByName) {
  torch::manual_seed(7);
  LlamaForCausalLM model(runtime_config(false));
  LlamaRuntime rt(model);
  using edkm::test::expect_error;
  expect_error([&] { rt.generate({}, edkm::GenerationOptions()); }, {"empty prompt"});
  expect_error([&] { rt.generate({1, 99}, edkm::GenerationOptions()); }, {"token 99", "vocabulary of 61"});
  expect_error([&] { rt.generate({1}, edkm::GenerationOptions().top_p(0)); }, {"top_p"});
  expect_error([&] { rt.generate({1}, edkm::GenerationOptions().temperature(-1)); }, {"temperature"});
  expect_error(
      [&] { rt.generate({1}, edkm::GenerationOptions().temperature(std::numeric_limits<double>::infinity())); },
      {"temperature must be finite"});
  // A subnormal temperature is sampling from the argmax (no inf - inf in the softmax).
  EXPECT_EQ(rt.generate({1, 2}, edkm::GenerationOptions().temperature(1e-310).top_k(3).max_new_tokens(4).eos_id(-1)),
            rt.generate({1, 2}, edkm::GenerationOptions().temperature(0).max_new_tokens(4).eos_id(-1)));
  expect_error([&] { rt.generate({1}, edkm::GenerationOptions().top_k(-2)); }, {"top_k", "-2"});
  expect_error([&] { rt.generate({1}, edkm::GenerationOptions().repetition_penalty(0)); }, {"repetition_penalty"});
  expect_error([&] { rt.generate(std::vector<int64_t>(41, 1), edkm::GenerationOptions()); },
               {"41 tokens", "40-token context"});
  // A prompt of the whole context still yields one token (nothing is fed back); max_new_tokens
  // "until a stop token" (INT64_MAX) ends at the context's end instead of overflowing.
  EXPECT_EQ(rt.generate(std::vector<int64_t>(40, 1), edkm::GenerationOptions()).size(), 1u);
  EXPECT_EQ(
      rt.generate({1, 2, 3}, edkm::GenerationOptions().max_new_tokens(std::numeric_limits<int64_t>::max()).eos_id(-1))
          .size(),
      38u);
  auto cache = rt.new_cache(4);
  expect_error([&] { rt.forward(at::zeros({5}, at::kLong), cache); }, {"exceed the 4-position cache"});
  expect_error(
      [&] {
        rt.forward(at::tensor(std::vector<int64_t>{1, 61}, at::kLong), cache);
      },
      {"token 61", "vocabulary of 61"});
  expect_error([&] { rt.forward(at::tensor(std::vector<int64_t>{-2}, at::kLong), cache); }, {"token -2"});
  EXPECT_EQ(cache.length, 0) << "a refused call leaves the cache as it was";
  LlamaRuntime meta(model);  // a cache made before the model moved is refused by where it is
  meta.to(at::kMeta);
  expect_error([&] { meta.forward(at::zeros({2}, at::kLong), cache); }, {"the cache is on cpu", "the model on meta"});
  // Moving a copy leaves the original's weights where they were (the modules are not moved in place).
  const auto before = rt.generate({1, 2, 3}, edkm::GenerationOptions().max_new_tokens(5));
  LlamaRuntime copy = rt;
  copy.to(at::kMeta);
  EXPECT_EQ(copy.device(), c10::Device(at::kMeta));
  EXPECT_EQ(rt.device(), c10::Device(at::kCPU));
  EXPECT_EQ(rt.generate({1, 2, 3}, edkm::GenerationOptions().max_new_tokens(5)), before);
  expect_error([&] { rt.new_cache(41); }, {"max_position_embeddings 40"});
  edkm::CompressedCheckpoint ckpt;
  for (const auto& p : model->named_parameters()) ckpt.tensors[p.key()] = p.value().detach();
  ckpt.tensors.erase("model.layers.1.mlp.up_proj.weight");
  expect_error([&] { LlamaRuntime(model->config, ckpt); }, {"model.layers.1.mlp.up_proj.weight"});
  ckpt.tensors["model.layers.1.mlp.up_proj.weight"] = at::zeros({48, 31});
  expect_error([&] { LlamaRuntime(model->config, ckpt); }, {"up_proj", "48 x 31", "48 x 32"});
  ckpt.tensors["model.layers.1.mlp.up_proj.weight"] = at::zeros({1536});
  expect_error([&] { LlamaRuntime(model->config, ckpt); }, {"up_proj.weight is [1536]", "48 x 32"});
  ckpt.tensors["model.layers.1.mlp.up_proj.weight"] = model->named_parameters()["model.layers.1.mlp.up_proj.weight"];
  EXPECT_NO_THROW(LlamaRuntime(model->config, ckpt));
  ckpt.tensors["model.norm.weight"] = at::ones({31});
  expect_error([&] { LlamaRuntime(model->config, ckpt); }, {"model.norm.weight is [31]", "needs [32]"});
  ckpt.tensors["model.norm.weight"] = at::ones({32}, at::kInt);  // converted, it would run as garbage
  expect_error([&] { LlamaRuntime(model->config, ckpt); }, {"model.norm.weight is Int", "floating point"});
  ckpt.tensors["model.norm.weight"] = at::ones({32});
  ckpt.tensors["model.norm.weight"][3] = std::numeric_limits<float>::quiet_NaN();  // greedy: token 0 forever
  expect_error([&] { LlamaRuntime(model->config, ckpt); }, {"model.norm.weight holds NaN or Inf"});
  ckpt.tensors["model.norm.weight"] = at::ones({32});
  // A config that does not describe the checkpoint: fewer layers, or a tied head over a
  // checkpoint with its own, leaves tensors unread; refused by name, as the dense reader does.
  auto fewer = model->config;
  fewer.num_hidden_layers(1);
  expect_error([&] { LlamaRuntime(fewer, ckpt); }, {"'model.layers.1.", "num_hidden_layers 1", "config.json"});
  auto tied = model->config;
  tied.tie_word_embeddings(true);
  expect_error([&] { LlamaRuntime(tied, ckpt); }, {"'lm_head.weight'", "tie_word_embeddings true"});
}

TEST(LlamaConfig, AbsurdOrFractionalSizesAreRefusedByName) {
  using edkm::test::expect_error;
  auto huge = runtime_config(false);
  huge.max_position_embeddings(int64_t{1} << 40);
  expect_error([&] { huge.validate(); }, {"max_position_embeddings", "absurd"});
  auto config = [](const std::string& layers, const std::string& positions) {
    return R"({"vocab_size": 61, "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
               "num_key_value_heads": 2, "num_hidden_layers": )" +
           layers + R"(, "max_position_embeddings": )" + positions + "}";
  };
  EXPECT_EQ(LlamaConfig::from_json(config("2", "40")).num_hidden_layers(), 2);
  expect_error([&] { LlamaConfig::from_json(config("1.9", "40")); },
               {"num_hidden_layers", "must be an integer", "1.9"});
  expect_error([&] { LlamaConfig::from_json(config("2", "1e12")); }, {"max_position_embeddings"});
  auto with = [&](const std::string& extra) {
    std::string c = config("2", "40");
    return c.substr(0, c.size() - 1) + ", " + extra + "}";
  };
  expect_error([&] { LlamaConfig::from_json(with(R"("head_dim": -4)")); }, {"head_dim -4", ">= 0"});
  const std::string llama3 = R"("rope_scaling": {"rope_type": "llama3", "factor": 8, "high_freq_factor": 4, )";
  EXPECT_NO_THROW(
      LlamaConfig::from_json(with(llama3 + R"("low_freq_factor": 1, "original_max_position_embeddings": 8192})")));
  expect_error(
      [&] {
        LlamaConfig::from_json(with(llama3 + R"("low_freq_factor": 1, "original_max_position_embeddings": 1e30})"));
      },
      {"original_max_position_embeddings", "1e+30"});
  expect_error(
      [&] {
        LlamaConfig::from_json(with(llama3 + R"("low_freq_factor": 1, "original_max_position_embeddings": 8192.5})"));
      },
      {"integer original_max_position_embeddings"});
  expect_error([&] { LlamaConfig::from_json(with(llama3 + R"("low_freq_factor": -1})")); }, {"low_freq_factor > 0"});
}

}  // namespace
