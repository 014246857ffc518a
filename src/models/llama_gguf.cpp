// LLaMA models from GGUF files: llama.* metadata -> LlamaConfig, llama.cpp tensor names -> Hugging
// Face names, Q/K rows back in Hugging Face's rotary order.
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include "edkm/io/file_io.h"

#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <vector>

#include "edkm/io/gguf.h"
#include "edkm/models/llama_io.h"
#include "edkm/models/tokenizer.h"

namespace edkm {

namespace {

std::string shape_string(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << at::IntArrayRef(s);
  return o.str();
}

// What the GGUF tensor becomes: its Hugging Face name, and the heads whose rotary rows llama.cpp
// interleaved (0: not permuted).
struct Target {
  std::string hf_name;
  int64_t permute_heads = 0;
};

// llama.cpp name -> Hugging Face name, or "" when the name is not part of a LLaMA model.
std::string hf_name_of(const std::string& name, int64_t* layer) {
  *layer = -1;
  static const std::map<std::string, std::string> top = {{"token_embd.weight", "model.embed_tokens.weight"},
                                                         {"output_norm.weight", "model.norm.weight"},
                                                         {"output.weight", "lm_head.weight"}};
  if (auto it = top.find(name); it != top.end()) return it->second;
  static const std::string blk = "blk.";
  if (name.compare(0, blk.size(), blk) != 0) return "";
  const size_t dot = name.find('.', blk.size());
  if (dot == std::string::npos || dot == blk.size()) return "";
  const std::string digits = name.substr(blk.size(), dot - blk.size());
  if (digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) return "";
  *layer = std::stoll(digits);
  static const std::map<std::string, std::string> per_layer = {{"attn_norm.weight", "input_layernorm.weight"},
                                                               {"ffn_norm.weight", "post_attention_layernorm.weight"},
                                                               {"attn_q.weight", "self_attn.q_proj.weight"},
                                                               {"attn_k.weight", "self_attn.k_proj.weight"},
                                                               {"attn_v.weight", "self_attn.v_proj.weight"},
                                                               {"attn_output.weight", "self_attn.o_proj.weight"},
                                                               {"attn_q.bias", "self_attn.q_proj.bias"},
                                                               {"attn_k.bias", "self_attn.k_proj.bias"},
                                                               {"attn_v.bias", "self_attn.v_proj.bias"},
                                                               {"attn_output.bias", "self_attn.o_proj.bias"},
                                                               {"ffn_gate.weight", "mlp.gate_proj.weight"},
                                                               {"ffn_up.weight", "mlp.up_proj.weight"},
                                                               {"ffn_down.weight", "mlp.down_proj.weight"},
                                                               {"ffn_gate.bias", "mlp.gate_proj.bias"},
                                                               {"ffn_up.bias", "mlp.up_proj.bias"},
                                                               {"ffn_down.bias", "mlp.down_proj.bias"}};
  auto it = per_layer.find(name.substr(dot + 1));
  if (it == per_layer.end()) return "";
  return "model.layers." + digits + "." + it->second;
}

// The Hugging Face parameter shapes of `c`, computed without building the model.
std::map<std::string, std::vector<int64_t>> expected_shapes(const LlamaConfig& c) {
  const int64_t h = c.hidden_size(), d = c.resolved_head_dim(), q = c.num_attention_heads() * d,
                kv = c.num_key_value_heads() * d, m = c.intermediate_size();
  std::map<std::string, std::vector<int64_t>> s;
  s["model.embed_tokens.weight"] = {c.vocab_size(), h};
  s["model.norm.weight"] = {h};
  if (!c.tie_word_embeddings()) s["lm_head.weight"] = {c.vocab_size(), h};
  for (int64_t i = 0; i < c.num_hidden_layers(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    s[p + "input_layernorm.weight"] = {h};
    s[p + "post_attention_layernorm.weight"] = {h};
    s[p + "self_attn.q_proj.weight"] = {q, h};
    s[p + "self_attn.k_proj.weight"] = {kv, h};
    s[p + "self_attn.v_proj.weight"] = {kv, h};
    s[p + "self_attn.o_proj.weight"] = {h, q};
    s[p + "mlp.gate_proj.weight"] = {m, h};
    s[p + "mlp.up_proj.weight"] = {m, h};
    s[p + "mlp.down_proj.weight"] = {h, m};
    if (c.attention_bias()) {
      s[p + "self_attn.q_proj.bias"] = {q};
      s[p + "self_attn.k_proj.bias"] = {kv};
      s[p + "self_attn.v_proj.bias"] = {kv};
      s[p + "self_attn.o_proj.bias"] = {h};
    }
    if (c.mlp_bias()) {
      s[p + "mlp.gate_proj.bias"] = {m};
      s[p + "mlp.up_proj.bias"] = {m};
      s[p + "mlp.down_proj.bias"] = {h};
    }
  }
  return s;
}

// llama.cpp stores each head's Q/K rows as [r0, r(d/2), r1, r(d/2+1), ...] (convert_hf_to_gguf.py's
// permute); Hugging Face's rotate_half wants the two halves contiguous. w: [heads * d, ...].
at::Tensor unpermute_rotary_rows(const at::Tensor& w, int64_t heads) {
  std::vector<int64_t> shape = {heads, w.size(0) / heads / 2, 2};
  for (int64_t k = 1; k < w.dim(); ++k) shape.push_back(w.size(k));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes());
}

// Largest width, head count, vocabulary or context accepted from metadata (2^24).
constexpr int64_t kMaxSize = int64_t{1} << 24;

LlamaConfig config_of(const GgufFile& f) {
  const std::string& path = f.path();
  TORCH_CHECK(f.has("general.architecture"), "edkm: ", path, ": general.architecture is missing");
  const std::string arch = f.get_string("general.architecture");
  TORCH_CHECK(arch == "llama", "edkm: ", path, ": architecture '", arch,
              "' is not supported (load_gguf_llama reads llama)");
  const std::string a = arch + ".";
  auto required = [&](const std::string& key) {
    TORCH_CHECK(f.has(a + key), "edkm: ", path, ": metadata '", a + key, "' is missing");
    return f.get_int(a + key);
  };
  // Refused by name: what would change the math and the model does not implement.
  TORCH_CHECK(f.get_int_or(a + "expert_count", 0) == 0, "edkm: ", path, ": ", a, "expert_count ",
              f.get_int_or(a + "expert_count", 0), ": mixture-of-experts models are not supported");
  const std::string scaling = f.get_string_or(a + "rope.scaling.type", "none");
  TORCH_CHECK(scaling == "none", "edkm: ", path, ": ", a, "rope.scaling.type '", scaling, "' is not supported");
  TORCH_CHECK(f.get_float_or(a + "rope.scale_linear", 1.0) == 1.0, "edkm: ", path, ": ", a,
              "rope.scale_linear is not supported");
  TORCH_CHECK(!f.has_tensor("rope_freqs.weight"), "edkm: ", path,
              ": tensor 'rope_freqs.weight' (per-frequency rope factors, Llama 3.1 scaling) is not supported");

  const int64_t layers = required("block_count");
  // Every layer needs at least 9 tensors: a count the file cannot hold is refused before anything
  // is sized by it.
  const int64_t tensors = static_cast<int64_t>(f.tensors().size());
  TORCH_CHECK(layers > 0 && layers <= tensors / 9, "edkm: ", path, ": ", a, "block_count ", layers,
              " is impossible for a file of ", tensors, " tensors");
  LlamaConfig c;
  c.num_hidden_layers(layers)
      .hidden_size(required("embedding_length"))
      .intermediate_size(required("feed_forward_length"))
      .num_attention_heads(required("attention.head_count"))
      .max_position_embeddings(required("context_length"));
  c.num_key_value_heads(f.has(a + "attention.head_count_kv") ? f.get_int(a + "attention.head_count_kv")
                                                             : c.num_attention_heads());
  TORCH_CHECK(c.num_attention_heads() > 0 && c.num_key_value_heads() > 0, "edkm: ", path, ": ", a,
              "attention.head_count ", c.num_attention_heads(), " and head_count_kv ", c.num_key_value_heads(),
              " must be positive");
  if (f.has(a + "attention.key_length")) {
    const int64_t d = f.get_int(a + "attention.key_length");
    TORCH_CHECK(f.get_int_or(a + "attention.value_length", d) == d, "edkm: ", path, ": ", a,
                "attention.value_length differs from key_length ", d, " (not supported)");
    c.head_dim(d);
  } else {
    TORCH_CHECK(c.hidden_size() % c.num_attention_heads() == 0, "edkm: ", path, ": ", a, "embedding_length ",
                c.hidden_size(), " is not a multiple of attention.head_count ", c.num_attention_heads());
  }
  // Sizes far beyond any model are refused before anything is computed from them (no overflow).
  for (const auto& [key, value] :
       std::vector<std::pair<const char*, int64_t>>{{"embedding_length", c.hidden_size()},
                                                    {"feed_forward_length", c.intermediate_size()},
                                                    {"attention.head_count", c.num_attention_heads()},
                                                    {"attention.head_count_kv", c.num_key_value_heads()},
                                                    {"attention.key_length", c.head_dim()},
                                                    {"context_length", c.max_position_embeddings()}}) {
    TORCH_CHECK(value >= 0 && value <= kMaxSize, "edkm: ", path, ": ", a, key, " ", value, " is absurd (limit ",
                kMaxSize, ")");
  }
  const int64_t head_dim = c.resolved_head_dim();
  TORCH_CHECK(f.get_int_or(a + "rope.dimension_count", head_dim) == head_dim, "edkm: ", path, ": ", a,
              "rope.dimension_count ", f.get_int_or(a + "rope.dimension_count", head_dim),
              " differs from the head size ", head_dim, " (partial rotary is not supported)");
  c.rope_theta(f.get_float_or(a + "rope.freq_base", 10000.0));
  TORCH_CHECK(f.has(a + "attention.layer_norm_rms_epsilon"), "edkm: ", path, ": metadata '", a,
              "attention.layer_norm_rms_epsilon' is missing");
  c.rms_norm_eps(f.get_float(a + "attention.layer_norm_rms_epsilon"));
  // Vocabulary: declared, else the tokenizer's, else the embedding's rows.
  TORCH_CHECK(f.has_tensor("token_embd.weight"), "edkm: ", path, ": tensor 'token_embd.weight' is missing");
  const auto embd = f.tensor_info("token_embd.weight");
  int64_t vocab = embd.shape.size() == 2 ? embd.shape[0] : 0;
  if (f.has(a + "vocab_size")) {
    vocab = f.get_int(a + "vocab_size");
  } else if (f.has("tokenizer.ggml.tokens")) {
    vocab = f.array_length("tokenizer.ggml.tokens");
  }
  TORCH_CHECK(vocab >= 0 && vocab <= kMaxSize, "edkm: ", path, ": vocabulary of ", vocab, " tokens is absurd");
  c.vocab_size(vocab);
  c.tie_word_embeddings(!f.has_tensor("output.weight"));
  c.attention_bias(f.has_tensor("blk.0.attn_q.bias"));
  c.mlp_bias(f.has_tensor("blk.0.ffn_gate.bias"));
  try {
    c.validate();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "edkm: ", path, ": ", e.msg());
  }
  return c;
}

}  // namespace

LlamaConfig load_gguf_llama_config(const std::string& path) { return config_of(GgufFile(path)); }

LlamaForCausalLM load_gguf_llama(const std::string& path, const LlamaLoadOptions& options) {
  const GgufFile f(path);
  LlamaConfig config = config_of(f);
  TORCH_CHECK(options.num_layers() >= 0 && options.num_layers() <= config.num_hidden_layers(), "num_layers ",
              options.num_layers(), " must be in 0..", config.num_hidden_layers());
  const int64_t all_layers = config.num_hidden_layers();
  if (options.num_layers() > 0) config.num_hidden_layers(options.num_layers());
  config.fused_swiglu(options.fused_swiglu()).checkpoint_layers(options.checkpoint_layers());

  // Every tensor checked against the config before the model is built.
  const auto expected = expected_shapes(config);
  std::map<std::string, std::pair<std::string, Target>> plan;  // hf name -> (gguf name, target)
  for (const auto& t : f.tensors()) {
    int64_t layer = -1;
    const std::string hf = hf_name_of(t.name, &layer);
    TORCH_CHECK(!hf.empty() && layer < all_layers, "edkm: ", path, ": unexpected tensor '", t.name,
                "': not part of a LLaMA model of ", all_layers, " layers");
    if (layer >= config.num_hidden_layers()) continue;  // a truncated stack (LlamaLoadOptions::num_layers)
    auto it = expected.find(hf);
    TORCH_CHECK(it != expected.end(), "edkm: ", path, ": unexpected tensor '", t.name, "' (", hf, ")");
    TORCH_CHECK(t.shape == it->second, "edkm: ", path, ": tensor '", t.name, "' has shape ", shape_string(t.shape),
                " but the config (", hf, ") needs ", shape_string(it->second));
    Target target{hf, 0};
    if (t.name.find(".attn_q.") != std::string::npos) target.permute_heads = config.num_attention_heads();
    if (t.name.find(".attn_k.") != std::string::npos) target.permute_heads = config.num_key_value_heads();
    plan[hf] = {t.name, target};
  }
  for (const auto& [hf, shape] : expected) {
    TORCH_CHECK(plan.count(hf), "edkm: ", path, ": the tensor of ", hf, " is missing");
  }
  // A type that cannot be read is refused now, not after half the model is loaded.
  for (const auto& [hf, entry] : plan) {
    const std::string type = f.tensor_info(entry.first).type;
    static const std::set<std::string> readable = {"F32",  "F16",  "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                                   "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"};
    TORCH_CHECK(readable.count(type), "edkm: ", path, ": tensor '", entry.first, "' has type ", type,
                ", which edkm cannot dequantize");
  }

  LlamaForCausalLM model(config);
  model->to(options.dtype());
  std::map<std::string, at::Tensor> params;
  for (const auto& p : model->named_parameters()) params[p.key()] = p.value();
  at::NoGradGuard ng;
  for (const auto& [hf, entry] : plan) {
    at::Tensor w = f.tensor(entry.first);  // fp32, one tensor at a time
    if (entry.second.permute_heads > 0) w = unpermute_rotary_rows(w, entry.second.permute_heads);
    params.at(hf).copy_(w);
  }
  return model;
}

bool export_gguf_to_hf(const std::string& gguf_path, const std::string& dir, const LlamaSaveOptions& options) {
  std::unique_ptr<Tokenizer> tok;
  if (GgufFile(gguf_path).get_string_or("tokenizer.ggml.model", "") == "gpt2") tok = load_gguf_tokenizer(gguf_path);
  const LlamaForCausalLM model = load_gguf_llama(gguf_path);
  save_hf_llama(model, dir, options);
  if (!tok) return false;
  save_hf_tokenizer(dynamic_cast<const BpeTokenizer&>(*tok), dir);
  return true;
}

LlamaForCausalLM load_llama(const std::string& path, const LlamaLoadOptions& options) {
  if (is_directory(path)) return load_hf_llama(path, options);
  TORCH_CHECK(is_gguf_file(path), "edkm: ", path, " is neither a Hugging Face checkpoint directory nor a GGUF file");
  return load_gguf_llama(path, options);
}

}  // namespace edkm
