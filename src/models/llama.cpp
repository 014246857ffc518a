#include "edkm/models/llama.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/outer.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/where.h>
#include <c10/util/Exception.h>
#include <torch/nn/init.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <ostream>
#include <set>
#include <type_traits>
#include <utility>
#include <vector>

#include "edkm/nn/activation_checkpoint.h"
#include "edkm/nn/glu.h"
#include "util/json_parse.h"

namespace edkm {

// --- config -------------------------------------------------------------------------------------

LlamaConfig LlamaConfig::tiny() {
  return LlamaConfig()
      .vocab_size(258)
      .hidden_size(128)
      .intermediate_size(352)
      .num_hidden_layers(2)
      .num_attention_heads(4)
      .num_key_value_heads(2)
      .max_position_embeddings(256)
      .rms_norm_eps(1e-5);
}

LlamaConfig LlamaConfig::llama_7b() { return LlamaConfig(); }

LlamaConfig LlamaConfig::preset(const std::string& name) {
  if (name == "tiny") return tiny();
  if (name == "llama-7b") return llama_7b();
  TORCH_CHECK(false, "unknown LLaMA preset '", name, "' (expected tiny or llama-7b)");
}

namespace {

using nlohmann::json;

template <class T>
T get_or(const json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)  // 128.7 must not become 128
    TORCH_CHECK(!it->is_number_float(), "config.json: key '", key, "' must be an integer, got ", it->dump());
  try {
    return it->get<T>();
  } catch (const json::exception& e) {
    TORCH_CHECK(false, "config.json: key '", key, "' has the wrong type (", it->type_name(), "): ", e.what());
  }
}

template <class T>
T get_required(const json& j, const char* key) {
  TORCH_CHECK(j.contains(key) && !j[key].is_null(), "config.json: required key '", key, "' is missing");
  return get_or<T>(j, key, T{});
}

// The rotary embedding's parameters, in every form config.json has had: transformers 4 writes
// "rope_theta" at the top level and the scaling in "rope_scaling" ({"rope_type" or "type",
// "factor", ...}); transformers 5 nests all of it, theta included, in "rope_parameters". A value
// given twice must agree; a rope type or key this model does not implement is refused by name.
void parse_rope(const json& j, LlamaConfig& c) {
  struct Source {
    const char* name;
    const json* value;
  };
  std::vector<Source> sources;  // the dictionaries that describe the rope, each with its name
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    TORCH_CHECK(it->is_object(), "config.json: ", key, " must be an object or null");
    for (const auto& [k, v] : it->items()) {
      TORCH_CHECK(!v.is_object(), "config.json: ", key, ".", k,
                  ": rope parameters per layer type are not supported (one rope for every layer)");
    }
    sources.push_back({key, &*it});
  }
  // One value of `key`, looked up at the top level (when `top`) and in every rope dictionary.
  auto lookup = [&](const char* key, bool top) -> std::pair<std::string, const json*> {
    std::pair<std::string, const json*> found{"", nullptr};
    auto take = [&](const std::string& where, const json& v) {
      if (v.is_null()) return;
      if (found.second != nullptr) {
        TORCH_CHECK(*found.second == v, "config.json: ", found.first, " = ", found.second->dump(), " and ", where,
                    " = ", v.dump(), " disagree");
        return;
      }
      found = {where, &v};
    };
    if (top && j.contains(key)) take(key, j.at(key));
    for (const auto& s : sources) {
      if (s.value->contains(key)) take(std::string(s.name) + "." + key, s.value->at(key));
    }
    return found;
  };
  auto number = [&](const char* key, bool top, double fallback) {
    const auto [where, v] = lookup(key, top);
    if (v == nullptr) return fallback;
    TORCH_CHECK(v->is_number(), "config.json: ", where, " must be a number, got ", v->dump());
    return v->get<double>();
  };
  c.rope_theta(number("rope_theta", /*top=*/true, 10000.0));
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    const auto [where, v] = lookup(key, false);
    if (v == nullptr) continue;
    TORCH_CHECK(v->is_string(), "config.json: ", where, " must be a string");
    TORCH_CHECK(type == "default" || type == v->get<std::string>(), "config.json: rope types '", type, "' and '",
                v->get<std::string>(), "' disagree");
    type = v->get<std::string>();
  }
  TORCH_CHECK(type == "default" || type == "llama3", "config.json: rope type '", type,
              "' is not supported (supported: default, llama3)");
  TORCH_CHECK(number("partial_rotary_factor", false, 1.0) == 1.0,
              "config.json: partial_rotary_factor is not supported (only 1: rotary on the whole head)");
  std::set<std::string> known = {"rope_type", "type", "rope_theta", "partial_rotary_factor"};
  if (type == "llama3") {
    known.insert({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"});
    TORCH_CHECK(lookup("factor", false).second != nullptr, "config.json: llama3 rope scaling needs 'factor'");
    const double old_max = number("original_max_position_embeddings", false, 8192.0);
    // Checked before the cast: a double outside int64 converts to anything.
    TORCH_CHECK(old_max >= 1 && old_max <= static_cast<double>(int64_t{1} << 24) && old_max == std::floor(old_max),
                "config.json: llama3 rope scaling needs an integer original_max_position_embeddings in 1..2^24, got ",
                old_max);
    c.rope_scaling_factor(number("factor", false, 0.0))
        .rope_low_freq_factor(number("low_freq_factor", false, 1.0))
        .rope_high_freq_factor(number("high_freq_factor", false, 4.0))
        .rope_original_max_position(static_cast<int64_t>(old_max));
    TORCH_CHECK(c.rope_scaling_factor() > 0 && c.rope_low_freq_factor() > 0 &&
                    c.rope_high_freq_factor() > c.rope_low_freq_factor(),
                "config.json: llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0 (got ",
                c.rope_scaling_factor(), ", ", c.rope_high_freq_factor(), ", ", c.rope_low_freq_factor(), ")");
  }
  for (const auto& s : sources) {
    for (const auto& [k, v] : s.value->items()) {
      TORCH_CHECK(known.count(k) || v.is_null(), "config.json: ", s.name, ".", k, " is not supported for rope type '",
                  type, "'");
    }
  }
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const std::string& text) {
  const json j = detail::parse_json_bounded(text, "config.json");
  TORCH_CHECK(j.is_object(), "config.json must hold a JSON object");
  const auto type = get_or<std::string>(j, "model_type", "llama");
  TORCH_CHECK(type == "llama", "config.json: model_type '", type, "' is not supported (expected llama)");
  LlamaConfig c;
  c.vocab_size(get_required<int64_t>(j, "vocab_size"))
      .hidden_size(get_required<int64_t>(j, "hidden_size"))
      .intermediate_size(get_required<int64_t>(j, "intermediate_size"))
      .num_hidden_layers(get_required<int64_t>(j, "num_hidden_layers"))
      .num_attention_heads(get_required<int64_t>(j, "num_attention_heads"));
  c.num_key_value_heads(get_or<int64_t>(j, "num_key_value_heads", c.num_attention_heads()))
      .head_dim(get_or<int64_t>(j, "head_dim", 0))
      .rms_norm_eps(get_or<double>(j, "rms_norm_eps", 1e-6))
      .max_position_embeddings(get_or<int64_t>(j, "max_position_embeddings", 2048))
      .tie_word_embeddings(get_or<bool>(j, "tie_word_embeddings", false))
      .attention_bias(get_or<bool>(j, "attention_bias", false))
      .mlp_bias(get_or<bool>(j, "mlp_bias", false));
  TORCH_CHECK(get_or<std::string>(j, "hidden_act", "silu") == "silu", "config.json: hidden_act '",
              get_or<std::string>(j, "hidden_act", ""), "' is not supported (expected silu)");
  // Keys that change the math and that this model does not implement: refused, never ignored.
  TORCH_CHECK(!j.contains("quantization_config") || j["quantization_config"].is_null(),
              "config.json: quantization_config (a pre-quantized checkpoint) is not supported");
  TORCH_CHECK(get_or<double>(j, "partial_rotary_factor", 1.0) == 1.0, "config.json: partial_rotary_factor ",
              get_or<double>(j, "partial_rotary_factor", 1.0), " is not supported (only 1: rotary on the whole head)");
  parse_rope(j, c);
  c.validate();
  return c;
}

std::string LlamaConfig::to_json() const {
  json j = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"vocab_size", vocab_size()},
            {"hidden_size", hidden_size()},
            {"intermediate_size", intermediate_size()},
            {"num_hidden_layers", num_hidden_layers()},
            {"num_attention_heads", num_attention_heads()},
            {"num_key_value_heads", num_key_value_heads()},
            {"head_dim", resolved_head_dim()},
            {"hidden_act", "silu"},
            {"rope_theta", rope_theta()},
            {"rms_norm_eps", rms_norm_eps()},
            {"max_position_embeddings", max_position_embeddings()},
            {"tie_word_embeddings", tie_word_embeddings()},
            {"attention_bias", attention_bias()},
            {"mlp_bias", mlp_bias()},
            {"rope_scaling", nullptr}};
  // Both forms, equal: transformers 4 reads rope_theta and rope_scaling, transformers 5 reads
  // rope_parameters.
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", rope_theta()}};
  if (rope_scaling_factor() > 0) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", rope_scaling_factor()},
                         {"low_freq_factor", rope_low_freq_factor()},
                         {"high_freq_factor", rope_high_freq_factor()},
                         {"original_max_position_embeddings", rope_original_max_position()}};
    j["rope_parameters"] = j["rope_scaling"];
    j["rope_parameters"]["rope_theta"] = rope_theta();
  }
  return j.dump(2) + "\n";
}

int64_t LlamaConfig::resolved_head_dim() const {
  return head_dim() > 0 ? head_dim() : hidden_size() / std::max<int64_t>(num_attention_heads(), 1);
}

int64_t LlamaConfig::num_parameters() const {
  const int64_t h = hidden_size(), d = resolved_head_dim(), q = num_attention_heads() * d,
                kv = num_key_value_heads() * d, m = intermediate_size();
  int64_t layer = h * q + 2 * h * kv + q * h + 3 * h * m + 2 * h;
  if (attention_bias()) layer += q + 2 * kv + h;
  if (mlp_bias()) layer += 2 * m + h;
  return vocab_size() * h * (tie_word_embeddings() ? 1 : 2) + num_hidden_layers() * layer + h;
}

void LlamaConfig::validate() const {
  TORCH_CHECK(vocab_size() > 0 && hidden_size() > 0 && intermediate_size() > 0 && num_hidden_layers() > 0 &&
                  num_attention_heads() > 0 && num_key_value_heads() > 0 && max_position_embeddings() > 0,
              "LlamaConfig: sizes must be positive (vocab ", vocab_size(), ", hidden ", hidden_size(), ", mlp ",
              intermediate_size(), ", layers ", num_hidden_layers(), ", heads ", num_attention_heads(), ", kv heads ",
              num_key_value_heads(), ", max positions ", max_position_embeddings(), ")");
  // The GGUF reader's bound too: larger sizes are corrupt files, and would only fail later in an
  // allocation (the rotary tables of max_position_embeddings, the weights of the others).
  constexpr int64_t kMaxSize = int64_t{1} << 24;
  for (const auto& [key, value] : {std::pair<const char*, int64_t>{"vocab_size", vocab_size()},
                                   {"hidden_size", hidden_size()},
                                   {"intermediate_size", intermediate_size()},
                                   {"num_hidden_layers", num_hidden_layers()},
                                   {"num_attention_heads", num_attention_heads()},
                                   {"num_key_value_heads", num_key_value_heads()},
                                   {"head_dim", head_dim()},
                                   {"max_position_embeddings", max_position_embeddings()}})
    TORCH_CHECK(value <= kMaxSize, "LlamaConfig: ", key, " ", value, " is absurd (limit ", kMaxSize, ")");
  TORCH_CHECK(head_dim() >= 0, "LlamaConfig: head_dim ", head_dim(), " must be >= 0 (0: hidden_size / heads)");
  TORCH_CHECK(head_dim() > 0 || hidden_size() % num_attention_heads() == 0, "LlamaConfig: hidden_size ", hidden_size(),
              " is not a multiple of num_attention_heads ", num_attention_heads());
  TORCH_CHECK(resolved_head_dim() % 2 == 0, "LlamaConfig: head_dim ", resolved_head_dim(),
              " must be even (rotary embedding)");
  TORCH_CHECK(num_attention_heads() % num_key_value_heads() == 0, "LlamaConfig: num_key_value_heads ",
              num_key_value_heads(), " must divide num_attention_heads ", num_attention_heads());
  TORCH_CHECK(rms_norm_eps() > 0 && rope_theta() > 0, "LlamaConfig: rms_norm_eps and rope_theta must be positive");
}

// --- functional ---------------------------------------------------------------------------------

namespace functional {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(weight.dim() == 1 && x.size(-1) == weight.size(0), "rms_norm: weight of shape ", weight.sizes(),
              " does not match the last dim of x ", x.sizes());
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor normed = xf * at::rsqrt(xf.square().mean({-1}, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> rotary_cos_sin(const LlamaConfig& config, int64_t seq_len, c10::Device device,
                                                 int64_t start) {
  TORCH_CHECK(seq_len >= 0 && start >= 0, "rotary_cos_sin: positions ", start, " + ", seq_len, " must be >= 0");
  const int64_t d = config.resolved_head_dim();
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor inv_freq = 1.0 / at::pow(config.rope_theta(), at::arange(0, d, 2, at::TensorOptions().dtype(at::kDouble)) /
                                                               static_cast<double>(d));
  if (config.rope_scaling_factor() > 0) {  // Llama 3.1: scale the low frequencies, blend the middle band
    const double factor = config.rope_scaling_factor(), lo = config.rope_low_freq_factor(),
                 hi = config.rope_high_freq_factor(), old = static_cast<double>(config.rope_original_max_position());
    const at::Tensor wavelen = 2 * M_PI / inv_freq;
    const at::Tensor smooth = (old / wavelen - lo) / (hi - lo);
    const at::Tensor blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq;
    at::Tensor scaled = at::where(wavelen > old / lo, inv_freq / factor, inv_freq);
    inv_freq = at::where((wavelen >= old / hi).logical_and(wavelen <= old / lo), blended, scaled);
  }
  const at::Tensor freqs =
      at::outer(at::arange(start, start + seq_len, at::TensorOptions().dtype(at::kDouble)), inv_freq);
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {emb.cos().to(f32), emb.sin().to(f32)};
}

at::Tensor apply_rotary_embedding(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t d = x.size(-1), half = d / 2;
  TORCH_CHECK(cos.dim() == 2 && cos.size(-1) == d && cos.sizes() == sin.sizes() && cos.size(0) == x.size(-2),
              "apply_rotary_embedding: cos/sin ", cos.sizes(), " do not fit x ", x.sizes());
  const at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.to(x.scalar_type()) + rotated * sin.to(x.scalar_type());
}

at::Tensor causal_gqa_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k.sizes() == v.sizes(),
              "causal_gqa_attention: expected q [b, h, t, d] and k, v [b, kv, t, d]; got ", q.sizes(), ", ", k.sizes(),
              ", ", v.sizes());
  TORCH_CHECK(q.size(1) % k.size(1) == 0, "causal_gqa_attention: ", k.size(1), " kv heads do not divide ", q.size(1),
              " query heads");
  return at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, /*is_causal=*/true, std::nullopt,
                                          /*enable_gqa=*/k.size(1) != q.size(1));
}

at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& tokens) {
  TORCH_CHECK(logits.dim() == 3 && tokens.dim() == 2 && logits.size(0) == tokens.size(0) &&
                  logits.size(1) == tokens.size(1) && tokens.size(1) >= 2,
              "causal_lm_loss: logits ", logits.sizes(), " and tokens ", tokens.sizes(), " do not match");
  const int64_t t = tokens.size(1) - 1;
  const at::Tensor pred = logits.narrow(1, 0, t).reshape({-1, logits.size(2)}).to(at::kFloat);
  return at::cross_entropy_loss(pred, tokens.narrow(1, 1, t).reshape({-1}));
}

}  // namespace functional

// --- modules ------------------------------------------------------------------------------------

namespace {

torch::nn::Linear make_linear(torch::nn::Module& m, const char* name, int64_t in, int64_t out, bool bias) {
  auto l = m.register_module(name, torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias)));
  at::NoGradGuard ng;
  l->weight.normal_(0, 0.02);  // Hugging Face's initializer_range
  if (bias) l->bias.zero_();
  return l;
}

}  // namespace

RMSNormImpl::RMSNormImpl(int64_t dim_, double eps_) : dim(dim_), eps(eps_) { reset(); }
void RMSNormImpl::reset() { weight = register_parameter("weight", at::ones({dim})); }
void RMSNormImpl::pretty_print(std::ostream& s) const { s << "edkm::RMSNorm(" << dim << ", eps=" << eps << ")"; }
at::Tensor RMSNormImpl::forward(const at::Tensor& x) { return functional::rms_norm(x, weight, eps); }

LlamaAttentionImpl::LlamaAttentionImpl(LlamaConfig c) : config(std::move(c)) { reset(); }
void LlamaAttentionImpl::reset() {
  config.validate();
  const int64_t h = config.hidden_size(), d = config.resolved_head_dim();
  const bool b = config.attention_bias();
  q_proj = make_linear(*this, "q_proj", h, config.num_attention_heads() * d, b);
  k_proj = make_linear(*this, "k_proj", h, config.num_key_value_heads() * d, b);
  v_proj = make_linear(*this, "v_proj", h, config.num_key_value_heads() * d, b);
  o_proj = make_linear(*this, "o_proj", config.num_attention_heads() * d, h, b);
}
void LlamaAttentionImpl::pretty_print(std::ostream& s) const {
  s << "edkm::LlamaAttention(heads=" << config.num_attention_heads() << ", kv_heads=" << config.num_key_value_heads()
    << ", head_dim=" << config.resolved_head_dim() << ")";
}
at::Tensor LlamaAttentionImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == config.hidden_size(), "LlamaAttention: expected x [batch, seq, ",
              config.hidden_size(), "], got ", x.sizes());
  const int64_t b = x.size(0), t = x.size(1), d = config.resolved_head_dim();
  auto heads = [&](const at::Tensor& y, int64_t n) { return y.view({b, t, n, d}).transpose(1, 2); };
  const at::Tensor q = functional::apply_rotary_embedding(heads(q_proj(x), config.num_attention_heads()), cos, sin);
  const at::Tensor k = functional::apply_rotary_embedding(heads(k_proj(x), config.num_key_value_heads()), cos, sin);
  const at::Tensor v = heads(v_proj(x), config.num_key_value_heads());
  const at::Tensor o = functional::causal_gqa_attention(q, k, v);
  return o_proj(o.transpose(1, 2).reshape({b, t, -1}));
}

LlamaMLPImpl::LlamaMLPImpl(LlamaConfig c) : config(std::move(c)) { reset(); }
void LlamaMLPImpl::reset() {
  const int64_t h = config.hidden_size(), m = config.intermediate_size();
  gate_proj = make_linear(*this, "gate_proj", h, m, config.mlp_bias());
  up_proj = make_linear(*this, "up_proj", h, m, config.mlp_bias());
  down_proj = make_linear(*this, "down_proj", m, h, config.mlp_bias());
}
void LlamaMLPImpl::pretty_print(std::ostream& s) const {
  s << "edkm::LlamaMLP(" << config.hidden_size() << " -> " << config.intermediate_size()
    << (config.fused_swiglu() ? ", fused SwiGLU)" : ")");
}
at::Tensor LlamaMLPImpl::forward(const at::Tensor& x) {
  if (config.fused_swiglu()) {
    // [up | gate] -> up * silu(gate): the fused function keeps only this concatenation for backward.
    return down_proj(functional::swiglu(at::cat({up_proj(x), gate_proj(x)}, -1)));
  }
  return down_proj(at::silu(gate_proj(x)) * up_proj(x));
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(LlamaConfig c) : config(std::move(c)) { reset(); }
void LlamaDecoderLayerImpl::reset() {
  self_attn = register_module("self_attn", LlamaAttention(config));
  mlp = register_module("mlp", LlamaMLP(config));
  input_layernorm = register_module("input_layernorm", RMSNorm(config.hidden_size(), config.rms_norm_eps()));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(config.hidden_size(), config.rms_norm_eps()));
}
void LlamaDecoderLayerImpl::pretty_print(std::ostream& s) const {
  s << "edkm::LlamaDecoderLayer" << (config.checkpoint_layers() ? "(checkpointed)" : "");
}

at::Tensor LlamaDecoderLayerImpl::forward_plain(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const at::Tensor h = x + self_attn(input_layernorm(x), cos, sin);
  return h + mlp(post_attention_layernorm(h));
}

at::Tensor LlamaDecoderLayerImpl::forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (!config.checkpoint_layers() || !at::GradMode::is_enabled()) return forward_plain(x, cos, sin);
  // A Palettizer's clustered weights reach the recompute through functional::checkpoint itself
  // (edkm/nn/activation_checkpoint.h): nothing layer-specific here.
  auto self = std::static_pointer_cast<LlamaDecoderLayerImpl>(shared_from_this());
  auto fn = [self](const std::vector<at::Tensor>& in) {
    return std::vector<at::Tensor>{self->forward_plain(in[0], in[1], in[2])};
  };
  return functional::checkpoint(fn, {x, cos, sin}, parameters())[0];
}

LlamaModelImpl::LlamaModelImpl(LlamaConfig c) : config(std::move(c)) { reset(); }
void LlamaModelImpl::reset() {
  config.validate();
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(config.vocab_size(), config.hidden_size()));
  {
    at::NoGradGuard ng;
    embed_tokens->weight.normal_(0, 0.02);
  }
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers(); ++i) layers->push_back(LlamaDecoderLayer(config));
  norm = register_module("norm", RMSNorm(config.hidden_size(), config.rms_norm_eps()));
}
void LlamaModelImpl::pretty_print(std::ostream& s) const {
  s << "edkm::LlamaModel(vocab=" << config.vocab_size() << ", hidden=" << config.hidden_size()
    << ", layers=" << config.num_hidden_layers() << ")";
}
at::Tensor LlamaModelImpl::forward(const at::Tensor& tokens) {
  TORCH_CHECK(tokens.dim() == 2 && tokens.scalar_type() == at::kLong,
              "LlamaModel: expected int64 tokens [batch, seq], got ", tokens.scalar_type(), " ", tokens.sizes());
  TORCH_CHECK(tokens.size(1) <= config.max_position_embeddings(), "LlamaModel: sequence of ", tokens.size(1),
              " tokens exceeds max_position_embeddings ", config.max_position_embeddings());
  at::Tensor x = embed_tokens(tokens);
  auto [cos, sin] = functional::rotary_cos_sin(config, tokens.size(1), tokens.device());
  for (const auto& layer : *layers) x = layer->as<LlamaDecoderLayerImpl>()->forward(x, cos, sin);
  return norm(x);
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(LlamaConfig c) : config(std::move(c)) { reset(); }
void LlamaForCausalLMImpl::reset() {
  model = register_module("model", LlamaModel(config));
  if (!config.tie_word_embeddings()) {
    lm_head = make_linear(*this, "lm_head", config.hidden_size(), config.vocab_size(), false);
  }
}
void LlamaForCausalLMImpl::pretty_print(std::ostream& s) const {
  s << "edkm::LlamaForCausalLM(" << config.num_parameters() << " parameters)";
}
at::Tensor LlamaForCausalLMImpl::logits(const at::Tensor& hidden) {
  return lm_head ? lm_head(hidden) : at::linear(hidden, model->embed_tokens->weight);
}
at::Tensor LlamaForCausalLMImpl::forward(const at::Tensor& tokens) { return logits(model->forward(tokens)); }

}  // namespace edkm
