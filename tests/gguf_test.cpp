// The GGUF reader (edkm/io/gguf.h): metadata of every value type, tensors of the simple types against
// hand-computed values, hostile headers (each refused with a c10::Error naming the problem, every
// truncation of a valid file too), and LLaMA models from GGUF (load_gguf_llama): a model written
// the way convert_hf_to_gguf.py writes it (Q/K rows permuted) reloads with identical logits; absurd
// metadata is refused before anything is allocated. Bit-exactness of the quantized types against
// the gguf Python package and parity with transformers are tests/python/check_gguf_*.py.
#include <ATen/ATen.h>
#include <edkm/io/gguf.h>
#include <edkm/models/llama.h>
#include <edkm/models/llama_io.h>
#include <edkm/models/tokenizer.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>

#include "gguf_builder.h"
#include "io/gguf_core.h"
#include "temp_dir.h"
#include "test_util.h"

namespace {

using edkm::test::expect_error;
using Builder = edkm::test::GgufBuilder;

std::string save(const Builder& b, const edkm::test::TempDir& dir, const std::string& name) {
  const std::string path = dir.path(name);
  edkm::write_text_file(path, b.bytes());
  return path;
}

using VT = edkm::io::gguf::ValueType;
constexpr uint32_t kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ8_0 = 8, kQ4_K = 12, kBF16 = 30, kIQ2_XXS = 16;

std::string floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

TEST(Gguf, ReadsEveryMetadataType) {
  edkm::test::TempDir dir;
  Builder b(2);
  b.key("u8", VT::UINT8).u8(200);
  b.key("i8", VT::INT8).u8(0xfe);  // -2
  b.key("u16", VT::UINT16).u16(60000);
  b.key("i16", VT::INT16).u16(0x8000);  // -32768
  b.kv_u32("u32", 4000000000u);
  b.key("i32", VT::INT32).u32(0xffffffffu);  // -1
  b.kv_f32("f32", 0.5f);
  b.key("yes", VT::BOOL).u8(1);
  b.kv_string("s", "llama");
  b.key("u64", VT::UINT64).u64(1ull << 40);
  b.key("i64", VT::INT64).u64(static_cast<uint64_t>(-5));
  b.key("f64", VT::FLOAT64).f64(1e-300);
  b.key("strings", VT::ARRAY).u32(static_cast<uint32_t>(VT::STRING)).u64(3).str("a").str("").str("c d");
  b.key("ints", VT::ARRAY).u32(static_cast<uint32_t>(VT::INT32)).u64(2).u32(7).u32(0xfffffff9u);
  b.key("floats", VT::ARRAY).u32(static_cast<uint32_t>(VT::FLOAT32)).u64(2).f32(1.5f).f32(-2.f);
  // An array of arrays: [[1, 2], []] of UINT16.
  b.key("nested", VT::ARRAY).u32(static_cast<uint32_t>(VT::ARRAY)).u64(2);
  b.u32(static_cast<uint32_t>(VT::UINT16)).u64(2).u16(1).u16(2);
  b.u32(static_cast<uint32_t>(VT::UINT16)).u64(0);
  const edkm::GgufFile f(save(b.data(""), dir, "m.gguf"));
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.keys().size(), 16u);
  EXPECT_EQ(f.keys().front(), "u8");
  EXPECT_EQ(f.get_int("u8"), 200);
  EXPECT_EQ(f.get_int("i8"), -2);
  EXPECT_EQ(f.get_int("u16"), 60000);
  EXPECT_EQ(f.get_int("i16"), -32768);
  EXPECT_EQ(f.get_int("u32"), 4000000000ll);
  EXPECT_EQ(f.get_int("i32"), -1);
  EXPECT_EQ(f.get_float("f32"), 0.5);
  EXPECT_TRUE(f.get_bool("yes"));
  EXPECT_EQ(f.get_string("s"), "llama");
  EXPECT_EQ(f.get_int("u64"), 1ll << 40);
  EXPECT_EQ(f.get_int("i64"), -5);
  EXPECT_EQ(f.get_float("f64"), 1e-300);
  EXPECT_EQ(f.get_float("u32"), 4e9);
  EXPECT_EQ(f.get_string_array("strings"), (std::vector<std::string>{"a", "", "c d"}));
  EXPECT_EQ(f.get_int_array("ints"), (std::vector<int64_t>{7, -7}));
  EXPECT_EQ(f.get_float_array("floats"), (std::vector<double>{1.5, -2.0}));
  EXPECT_EQ(f.value_type("nested"), "ARRAY[ARRAY]");
  EXPECT_EQ(f.array_length("nested"), 2);
  EXPECT_EQ(f.get_int_or("absent", 9), 9);
  expect_error([&] { f.get_string("u8"); }, {"m.gguf", "'u8'", "UINT8", "STRING"});
  expect_error([&] { f.get_int("absent"); }, {"m.gguf", "'absent'", "missing"});
  expect_error([&] { f.get_int_array("strings"); }, {"'strings'", "ARRAY[STRING]"});
  expect_error([&] { f.get_int("s"); }, {"'s'", "STRING"});
}

TEST(Gguf, ReadsTensorsOfSimpleTypes) {
  edkm::test::TempDir dir;
  // a: F32 [2, 3] (ne {3, 2}); h: F16 [4]; bf: BF16 [2]; q: Q8_0 [32] with d = 0.5; q4: Q4_0 [32], d = 2.
  std::string data;
  const std::vector<float> a = {1, 2, 3, 4, 5, -6};
  Builder b;
  b.kv_u32("general.alignment", 64);
  b.tensor("a", {3, 2}, kF32, 0);
  data += floats(a);
  data.resize(64, '\0');
  b.tensor("h", {4}, kF16, 64);
  for (uint16_t h : {0x3c00, 0xc000, 0x0001, 0x7c00})
    data += std::string{static_cast<char>(h), static_cast<char>(h >> 8)};
  data.resize(128, '\0');
  b.tensor("bf", {2}, kBF16, 128);
  for (uint16_t h : {0x3f80, 0xc0a0}) data += std::string{static_cast<char>(h), static_cast<char>(h >> 8)};
  data.resize(192, '\0');
  b.tensor("q", {32}, kQ8_0, 192);
  data += std::string{0x00, 0x38};  // fp16 0.5
  for (int j = 0; j < 32; ++j) data.push_back(static_cast<char>(j - 16));
  data.resize(256, '\0');
  b.tensor("q4", {32}, kQ4_0, 256);
  data += std::string{0x00, 0x40};  // fp16 2
  for (int j = 0; j < 16; ++j) data.push_back(static_cast<char>(j | ((15 - j) << 4)));
  b.tensor("iq", {256}, kIQ2_XXS, 320);
  data.resize(320, '\0');
  data += std::string(66, '\0');
  const std::string path = save(b.data(data, 64), dir, "t.gguf");
  const edkm::GgufFile f(path);
  EXPECT_EQ(f.alignment(), 64);
  ASSERT_EQ(f.tensors().size(), 6u);
  EXPECT_EQ(f.tensor_info("a").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.tensor_info("q").type, "Q8_0");
  EXPECT_TRUE(at::equal(f.tensor("a"), torch::tensor(a).view({2, 3})));
  const at::Tensor h = f.tensor("h");
  EXPECT_EQ(h[0].item<float>(), 1.0f);
  EXPECT_EQ(h[1].item<float>(), -2.0f);
  EXPECT_EQ(h[2].item<float>(), std::ldexp(1.0f, -24));  // the smallest subnormal
  EXPECT_TRUE(std::isinf(h[3].item<float>()));
  EXPECT_TRUE(at::equal(f.tensor("bf"), torch::tensor({1.0f, -5.0f})));
  EXPECT_TRUE(at::equal(f.tensor("q"), (torch::arange(32, at::kFloat) - 16) * 0.5f));
  const at::Tensor q4 = f.tensor("q4");
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(q4[j].item<float>(), 2.0f * static_cast<float>(j - 8));
    EXPECT_EQ(q4[j + 16].item<float>(), 2.0f * static_cast<float>(7 - j));
  }
  EXPECT_EQ(f.tensor("q", at::kBFloat16).scalar_type(), at::kBFloat16);
  expect_error([&] { f.tensor("iq"); }, {"t.gguf", "'iq'", "IQ2_XXS", "cannot dequantize"});
  expect_error([&] { f.tensor("nope"); }, {"t.gguf", "no tensor 'nope'"});
}

// A valid file with metadata, two tensors and an alignment: every prefix of it is refused cleanly.
std::string valid_file() {
  Builder b;
  b.kv_string("general.architecture", "test");
  b.key("list", VT::ARRAY).u32(static_cast<uint32_t>(VT::STRING)).u64(2).str("x").str("yz");
  b.tensor("w", {32, 2}, kQ8_0, 0).tensor("n", {4}, kF32, 96);
  std::string data(96, '\x01');
  data += floats({1, 2, 3, 4});
  return b.data(data).bytes();
}

TEST(Gguf, RefusesEveryTruncation) {
  const std::string good = valid_file();
  const auto* p = reinterpret_cast<const uint8_t*>(good.data());
  EXPECT_NO_THROW(edkm::io::gguf::parse(p, good.size()));
  for (size_t n = 0; n < good.size(); ++n) {
    std::vector<uint8_t> copy(p, p + n);  // exactly n bytes, so ASan sees any overread
    EXPECT_THROW(edkm::io::gguf::parse(copy.data(), n), edkm::io::FormatError) << n << " bytes";
  }
}

TEST(Gguf, RefusesHostileHeaders) {
  edkm::test::TempDir dir;
  auto refused = [&](const std::string& bytes, std::initializer_list<std::string> parts) {
    edkm::write_text_file(dir.path("bad.gguf"), bytes);
    std::vector<std::string> all = {"bad.gguf"};
    all.insert(all.end(), parts.begin(), parts.end());
    try {
      edkm::GgufFile f(dir.path("bad.gguf"));
      ADD_FAILURE() << "accepted; expected an error naming " << *parts.begin();
    } catch (const c10::Error& e) {
      for (const auto& part : all) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  refused("GGML" + valid_file().substr(4), {"not a GGUF file"});
  refused(Builder(1).bytes(), {"version 1", "not supported"});
  refused(Builder(4).bytes(), {"version 4"});
  refused(Builder(0x03000000).bytes(), {"big-endian"});
  refused(Builder().counts(0, 1ull << 60).bytes(), {"metadata entries cannot fit"});
  refused(Builder().counts(1ull << 60, 0).bytes(), {"tensors cannot fit"});
  refused(Builder().key("k", VT::STRING).u64(1ull << 62).bytes(), {"metadata 'k'", "truncated"});
  refused(Builder().key("k", VT::ARRAY).u32(static_cast<uint32_t>(VT::UINT64)).u64(1ull << 61).bytes(),
          {"metadata 'k'", "array of 2305843009213693952 UINT64", "does not fit"});
  refused(Builder().key("k", VT::ARRAY).u32(99).u64(0).bytes(), {"unknown array element type 99"});
  refused(Builder().key("k", static_cast<VT>(13)).u32(0).bytes(), {"'k'", "unknown value type 13"});
  refused(Builder().key("k", VT::BOOL).u8(2).bytes(), {"bool", "2"});
  {
    Builder b;
    b.key("deep", VT::ARRAY);
    for (int d = 0; d < 20; ++d) b.u32(static_cast<uint32_t>(VT::ARRAY)).u64(1);
    b.u32(static_cast<uint32_t>(VT::UINT8)).u64(0);
    refused(b.bytes(), {"nested deeper than 8"});
  }
  refused(Builder().key("k", VT::ARRAY).u32(static_cast<uint32_t>(VT::ARRAY)).u64(70000).bytes() +
              std::string(70000 * 12, '\0'),
          {"70000 nested arrays"});
  refused(Builder().kv_u32("a", 1).kv_u32("a", 2).bytes(), {"'a' appears twice"});
  refused(Builder().kv_u32("", 1).bytes(), {"empty key"});
  refused(Builder().kv_u32("general.alignment", 48).bytes(), {"general.alignment 48", "power of two"});
  refused(Builder().kv_u32("general.alignment", 0).bytes(), {"general.alignment 0"});
  refused(Builder().key("general.alignment", VT::UINT64).u64(32).bytes(), {"general.alignment must be UINT32"});
  refused(Builder().tensor("w", {32}, kF32, 0).tensor("w", {32}, kF32, 128).data(std::string(256, '\0')).bytes(),
          {"tensor 'w' appears twice"});
  refused(Builder().tensor("w", {1, 1, 1, 1, 1}, kF32, 0).data("    ").bytes(), {"'w'", "5 dims"});
  refused(Builder().tensor("w", {1ull << 63}, kF32, 0).data("").bytes(), {"'w'", "exceeds int64"});
  refused(Builder().tensor("w", {1ull << 32, 1ull << 32}, kF32, 0).data("").bytes(), {"'w'", "overflows"});
  refused(Builder().tensor("w", {1ull << 61, 2}, kF32, 0).data("").bytes(), {"'w'", "byte size overflows"});
  refused(Builder().tensor("w", {48}, kQ4_K, 0).data(std::string(144, '\0')).bytes(),
          {"'w'", "48", "Q4_K block size 256"});
  refused(Builder().tensor("w", {4}, 77, 0).data(std::string(16, '\0')).bytes(), {"'w'", "unknown ggml type 77"});
  refused(Builder().tensor("w", {4}, kF32, 8).data(std::string(64, '\0')).bytes(), {"'w'", "offset 8", "alignment 32"});
  refused(Builder().tensor("w", {16}, kF32, 32).data(std::string(64, '\0')).bytes(), {"'w'", "past the end"});
  refused(Builder().tensor("w", {16}, kF32, ~uint64_t{31}).data(std::string(64, '\0')).bytes(), {"'w'", "overflows"});
  refused(Builder().tensor("a", {16}, kF32, 0).tensor("b", {4}, kF32, 32).data(std::string(64, '\0')).bytes(),
          {"overlaps"});
  refused(Builder().tensor("w", {8}, kF32, 0).bytes(), {"ends before its data section"});
  refused(Builder().tensor("", {8}, kF32, 0).data(std::string(32, '\0')).bytes(), {"empty name"});
  // Not a file.
  expect_error([&] { edkm::GgufFile f(dir.path("missing.gguf")); }, {"missing.gguf", "cannot open"});
  expect_error([&] { edkm::GgufFile f(dir.path("")); }, {"not a regular file"});
  edkm::write_text_file(dir.path("good.gguf"), valid_file());
  EXPECT_TRUE(edkm::is_gguf_file(dir.path("good.gguf")));
  EXPECT_FALSE(edkm::is_gguf_file(dir.path("")));
  EXPECT_FALSE(edkm::is_gguf_file(dir.path("missing.gguf")));
}

// --- LLaMA from GGUF --------------------------------------------------------------------------

edkm::LlamaConfig tiny_config() {
  return edkm::LlamaConfig()
      .vocab_size(40)
      .hidden_size(32)
      .intermediate_size(48)
      .num_hidden_layers(2)
      .num_attention_heads(4)
      .num_key_value_heads(2)
      .max_position_embeddings(64)
      .rope_theta(5000.0)
      .rms_norm_eps(std::ldexp(1.0, -17));  // exact in the file's FLOAT32
}

// convert_hf_to_gguf.py's LlamaModel.permute: each head's rows [first half, second half] interleaved.
at::Tensor permute_rotary_rows(const at::Tensor& w, int64_t heads) {
  return w.reshape({heads, 2, w.size(0) / heads / 2, w.size(1)}).transpose(1, 2).reshape(w.sizes());
}

struct LlamaGguf {
  std::map<std::string, std::string> strings;  // metadata
  std::map<std::string, uint32_t> ints;        // UINT32 metadata
  std::map<std::string, float> reals;          // FLOAT32 metadata
  std::map<std::string, std::vector<std::string>> string_arrays;
  std::map<std::string, std::vector<int32_t>> int_arrays;   // INT32 arrays
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // F32, PyTorch order
  std::string write(const edkm::test::TempDir& dir, const std::string& name) const {
    Builder b;
    for (const auto& [k, v] : strings) b.kv_string(k, v);
    for (const auto& [k, v] : string_arrays) {
      b.key(k, VT::ARRAY).u32(static_cast<uint32_t>(VT::STRING)).u64(v.size());
      for (const auto& x : v) b.str(x);
    }
    for (const auto& [k, v] : int_arrays) {
      b.key(k, VT::ARRAY).u32(static_cast<uint32_t>(VT::INT32)).u64(v.size());
      for (int32_t x : v) b.u32(static_cast<uint32_t>(x));
    }
    for (const auto& [k, v] : ints) b.kv_u32(k, v);
    for (const auto& [k, v] : reals) b.kv_f32(k, v);
    std::string data;
    for (const auto& [n, t] : tensors) {
      std::vector<uint64_t> ne;
      for (int64_t d = t.dim() - 1; d >= 0; --d) ne.push_back(static_cast<uint64_t>(t.size(d)));
      b.tensor(n, ne, kF32, data.size());
      const at::Tensor c = t.contiguous().to(at::kFloat);
      data.append(static_cast<const char*>(c.data_ptr()), c.nbytes());
      data.resize((data.size() + 31) / 32 * 32, '\0');
    }
    return save(b.data(data), dir, name);
  }
  void erase(const std::string& n) {
    tensors.erase(std::remove_if(tensors.begin(), tensors.end(), [&](const auto& p) { return p.first == n; }),
                  tensors.end());
  }
};

// The GGUF convert_hf_to_gguf.py would write for `model` (F32 tensors).
LlamaGguf as_gguf(const edkm::LlamaForCausalLM& model) {
  const auto& c = model->config;
  LlamaGguf g;
  g.strings["general.architecture"] = "llama";
  g.ints["llama.block_count"] = static_cast<uint32_t>(c.num_hidden_layers());
  g.ints["llama.context_length"] = static_cast<uint32_t>(c.max_position_embeddings());
  g.ints["llama.embedding_length"] = static_cast<uint32_t>(c.hidden_size());
  g.ints["llama.feed_forward_length"] = static_cast<uint32_t>(c.intermediate_size());
  g.ints["llama.attention.head_count"] = static_cast<uint32_t>(c.num_attention_heads());
  g.ints["llama.attention.head_count_kv"] = static_cast<uint32_t>(c.num_key_value_heads());
  g.ints["llama.rope.dimension_count"] = static_cast<uint32_t>(c.resolved_head_dim());
  g.reals["llama.rope.freq_base"] = static_cast<float>(c.rope_theta());
  g.reals["llama.attention.layer_norm_rms_epsilon"] = static_cast<float>(c.rms_norm_eps());
  auto p = model->named_parameters();
  g.tensors.emplace_back("token_embd.weight", p["model.embed_tokens.weight"]);
  g.tensors.emplace_back("output_norm.weight", p["model.norm.weight"]);
  if (!c.tie_word_embeddings()) g.tensors.emplace_back("output.weight", p["lm_head.weight"]);
  for (int64_t i = 0; i < c.num_hidden_layers(); ++i) {
    const std::string hf = "model.layers." + std::to_string(i) + ".", gg = "blk." + std::to_string(i) + ".";
    g.tensors.emplace_back(gg + "attn_norm.weight", p[hf + "input_layernorm.weight"]);
    g.tensors.emplace_back(gg + "ffn_norm.weight", p[hf + "post_attention_layernorm.weight"]);
    g.tensors.emplace_back(gg + "attn_q.weight",
                           permute_rotary_rows(p[hf + "self_attn.q_proj.weight"], c.num_attention_heads()));
    g.tensors.emplace_back(gg + "attn_k.weight",
                           permute_rotary_rows(p[hf + "self_attn.k_proj.weight"], c.num_key_value_heads()));
    g.tensors.emplace_back(gg + "attn_v.weight", p[hf + "self_attn.v_proj.weight"]);
    g.tensors.emplace_back(gg + "attn_output.weight", p[hf + "self_attn.o_proj.weight"]);
    g.tensors.emplace_back(gg + "ffn_gate.weight", p[hf + "mlp.gate_proj.weight"]);
    g.tensors.emplace_back(gg + "ffn_up.weight", p[hf + "mlp.up_proj.weight"]);
    g.tensors.emplace_back(gg + "ffn_down.weight", p[hf + "mlp.down_proj.weight"]);
  }
  return g;
}

TEST(GgufLlama, ReloadsAConvertedModelExactly) {
  torch::manual_seed(3);
  edkm::test::TempDir dir;
  for (bool tied : {false, true}) {
    edkm::LlamaForCausalLM model(tiny_config().tie_word_embeddings(tied));
    const std::string path = as_gguf(model).write(dir, tied ? "tied.gguf" : "m.gguf");
    const auto config = edkm::load_gguf_llama_config(path);
    EXPECT_EQ(config.to_json(), model->config.to_json());
    auto loaded = edkm::load_llama(path);
    for (const auto& p : model->named_parameters()) {
      EXPECT_TRUE(at::equal(p.value(), loaded->named_parameters()[p.key()])) << p.key();
    }
    const at::Tensor x = at::randint(40, {2, 9}, at::kLong);
    torch::NoGradGuard ng;
    EXPECT_TRUE(at::equal(model(x), loaded(x)));
    // A truncated stack and bf16.
    auto one = edkm::load_gguf_llama(path, edkm::LlamaLoadOptions().num_layers(1).dtype(at::kBFloat16));
    EXPECT_EQ(one->model->layers->size(), 1u);
    EXPECT_EQ(one->model->norm->weight.scalar_type(), at::kBFloat16);
  }
}

TEST(GgufLlama, ExportsToHuggingFaceWithItsTokenizer) {
  torch::manual_seed(4);
  edkm::test::TempDir dir;
  // A byte-level BPE vocabulary (256 bytes, merges, control tokens) as convert_hf_to_gguf.py writes it.
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(edkm::test::byte_char(b));
  for (const char* t : {"ab", "abc", "Ġt", "he", "Ġthe", "<|im_start|>", "<|endoftext|>"}) tokens.push_back(t);
  std::vector<int32_t> types(tokens.size(), 1);
  types[261] = types[262] = 3;
  edkm::LlamaForCausalLM model(tiny_config().vocab_size(static_cast<int64_t>(tokens.size())));
  LlamaGguf g = as_gguf(model);
  g.strings["tokenizer.ggml.model"] = "gpt2";
  g.strings["tokenizer.ggml.pre"] = "smollm";
  g.string_arrays["tokenizer.ggml.tokens"] = tokens;
  g.string_arrays["tokenizer.ggml.merges"] = {"a b", "ab c", "Ġ t", "h e", "Ġt he"};
  g.int_arrays["tokenizer.ggml.token_type"] = types;
  g.ints["tokenizer.ggml.bos_token_id"] = 262;
  g.ints["tokenizer.ggml.eos_token_id"] = 261;
  const std::string path = g.write(dir, "tok.gguf");
  ASSERT_TRUE(edkm::export_gguf_to_hf(path, dir.path("hf")));
  auto reloaded = edkm::load_hf_llama(dir.path("hf"));
  const at::Tensor x = at::randint(static_cast<int64_t>(tokens.size()), {1, 7}, at::kLong);
  torch::NoGradGuard ng;
  EXPECT_TRUE(at::equal(model(x), reloaded(x)));
  if (edkm::has_pcre2()) {
    auto from_gguf = edkm::load_gguf_tokenizer(path);
    auto from_hf = edkm::load_tokenizer(dir.path("hf"));  // its tokenizer.json
    const std::string text = "<|im_start|>the abc 123 theabc\n\n  \xe4\xb8\xad<|endoftext|>";
    EXPECT_EQ(from_hf->encode(text), from_gguf->encode(text));
    EXPECT_EQ(from_hf->bos_id(), 262);
    EXPECT_EQ(from_hf->eos_id(), 261);
  }
  // Another tokenizer model: the model alone.
  g.strings["tokenizer.ggml.model"] = "llama";
  ASSERT_FALSE(edkm::export_gguf_to_hf(g.write(dir, "sp.gguf"), dir.path("hf-sp")));
  struct stat st {};
  EXPECT_EQ(::stat(dir.path("hf-sp/config.json").c_str(), &st), 0);
  EXPECT_NE(::stat(dir.path("hf-sp/tokenizer.json").c_str(), &st), 0);
}

TEST(GgufLlama, RefusesOtherModelsAndAbsurdMetadata) {
  torch::manual_seed(4);
  edkm::test::TempDir dir;
  edkm::LlamaForCausalLM model(tiny_config());
  const LlamaGguf good = as_gguf(model);
  int n = 0;
  // Each case: an edit of the good file, and what the refusal names.
  auto refused = [&](auto&& edit, std::initializer_list<std::string> parts) {
    LlamaGguf g = good;
    edit(g);
    const std::string path = g.write(dir, "bad" + std::to_string(n++) + ".gguf");
    expect_error([&] { edkm::load_gguf_llama(path); }, parts);
  };
  refused([](auto& g) { g.strings["general.architecture"] = "qwen2"; }, {"architecture 'qwen2'", "not supported"});
  refused([](auto& g) { g.ints["llama.attention.head_count"] = 0; }, {"head_count 0", "positive"});
  refused([](auto& g) { g.ints["llama.block_count"] = 1000000000; }, {"block_count 1000000000", "impossible"});
  refused([](auto& g) { g.ints["llama.attention.head_count"] = 5; }, {"embedding_length 32", "head_count 5"});
  refused([](auto& g) { g.ints["llama.attention.head_count_kv"] = 3; }, {"num_key_value_heads 3", "divide"});
  refused([](auto& g) { g.ints["llama.attention.key_length"] = 4000000000u; },
          {"attention.key_length 4000000000", "absurd"});
  refused([](auto& g) { g.ints["llama.expert_count"] = 8; }, {"expert_count 8", "mixture-of-experts"});
  refused([](auto& g) { g.strings["llama.rope.scaling.type"] = "yarn"; }, {"rope.scaling.type 'yarn'"});
  refused([](auto& g) { g.ints["llama.rope.dimension_count"] = 4; }, {"rope.dimension_count 4", "partial rotary"});
  refused([](auto& g) { g.ints.erase("llama.embedding_length"); }, {"llama.embedding_length", "missing"});
  refused([](auto& g) { g.tensors.emplace_back("rope_freqs.weight", at::ones({4})); },
          {"rope_freqs.weight", "not supported"});
  refused([](auto& g) { g.erase("blk.1.ffn_up.weight"); }, {"model.layers.1.mlp.up_proj.weight", "missing"});
  refused([](auto& g) { g.tensors.emplace_back("blk.0.extra.weight", at::ones({4})); },
          {"unexpected tensor 'blk.0.extra.weight'"});
  refused(
      [](auto& g) {
        g.tensors.emplace_back("blk.7.attn_q.weight", at::ones({32, 32}));
      },
      {"unexpected tensor 'blk.7.attn_q.weight'"});
  refused(
      [](auto& g) {
        g.tensors[0].second = at::ones({41, 32});  // token_embd with one row too many
        g.ints["llama.vocab_size"] = 40;
      },
      {"token_embd.weight", "[41, 32]", "[40, 32]"});
  refused(
      [](auto& g) {
        g.strings["llama.feed_forward_length"] = "many";
        g.ints.erase("llama.feed_forward_length");
      },
      {"llama.feed_forward_length", "STRING", "integer"});
}

// The real model when scripts/env.sh fetched it: its config and tensor types as published.
TEST(GgufLlama, ReadsSmolLM2Config) {
  const std::string path = EDKM_SMOLLM2_GGUF;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) GTEST_SKIP() << path << " is missing (scripts/env.sh fetches it)";
  const auto c = edkm::load_gguf_llama_config(path);
  EXPECT_EQ(c.num_hidden_layers(), 30);
  EXPECT_EQ(c.hidden_size(), 576);
  EXPECT_EQ(c.intermediate_size(), 1536);
  EXPECT_EQ(c.num_attention_heads(), 9);
  EXPECT_EQ(c.num_key_value_heads(), 3);
  EXPECT_EQ(c.resolved_head_dim(), 64);
  EXPECT_EQ(c.vocab_size(), 49152);
  EXPECT_EQ(c.rope_theta(), 100000.0);
  EXPECT_EQ(c.max_position_embeddings(), 8192);
  EXPECT_FLOAT_EQ(static_cast<float>(c.rms_norm_eps()), 1e-5f);
  EXPECT_TRUE(c.tie_word_embeddings());
  const edkm::GgufFile f(path);
  std::map<std::string, int> types;
  for (const auto& t : f.tensors()) ++types[t.type];
  EXPECT_EQ(types, (std::map<std::string, int>{{"F32", 61}, {"Q4_1", 210}, {"Q8_0", 1}}));
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_string("tokenizer.ggml.pre"), "smollm");
  EXPECT_EQ(f.array_length("tokenizer.ggml.tokens"), 49152);
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.merges").size(), 48900u);
  EXPECT_EQ(f.get_int("tokenizer.ggml.bos_token_id"), 1);
}

}  // namespace
