#pragma once
// The LLaMA decoder as LibTorch modules (RMSNorm, rotary embedding, grouped-query attention
// through scaled_dot_product_attention, SwiGLU MLP), with the parameter names of Hugging Face's
// LlamaForCausalLM ("model.layers.0.self_attn.q_proj.weight", "lm_head.weight", ...) so that
// Hugging Face checkpoints load by name (see edkm/models/llama_io.h).
//
// The rotary embedding follows Hugging Face's convention (rotate_half: the first and second
// halves of each head are the pairs), which is the layout of their q_proj / k_proj weights.
//
// Palettizer: every projection is a torch::nn::Linear and the embedding a torch::nn::Embedding,
// so edkm::Palettizer clusters them; a tied head reads the embedding's weight member and so sees
// its clustered value too. Activation checkpointing per decoder layer (`checkpoint_layers`) goes
// through edkm::functional::checkpoint, whose recompute reads the weights the forward read (the
// clustered ones of a Palettizer scope, even when backward runs after the scope), so gradients
// flow through DKM into the parameters.
#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <string>
#include <utility>

#include "edkm/export.h"

namespace edkm {

/// The shape of a LLaMA model: the fields of Hugging Face's LlamaConfig (config.json) that the
/// architecture uses, plus run-time switches (fused_swiglu, checkpoint_layers).
///
/// Example:
///   auto config = edkm::LlamaConfig::llama_7b().num_hidden_layers(2);  // 7B shapes, 2 layers
///   edkm::LlamaForCausalLM model(config);
struct EDKM_API LlamaConfig {
  /// Tokens in the vocabulary. Default 32000.
  TORCH_ARG(int64_t, vocab_size) = 32000;
  /// Model width. Default 4096.
  TORCH_ARG(int64_t, hidden_size) = 4096;
  /// Width of the SwiGLU MLP. Default 11008.
  TORCH_ARG(int64_t, intermediate_size) = 11008;
  /// Decoder layers. Default 32.
  TORCH_ARG(int64_t, num_hidden_layers) = 32;
  /// Query heads. Default 32.
  TORCH_ARG(int64_t, num_attention_heads) = 32;
  /// Key/value heads (grouped-query attention when fewer than the query heads; must divide
  /// them). Default 32.
  TORCH_ARG(int64_t, num_key_value_heads) = 32;
  /// Size of one head; 0: hidden_size / num_attention_heads. Default 0.
  TORCH_ARG(int64_t, head_dim) = 0;
  /// Base of the rotary embedding's frequencies. Default 10000.
  TORCH_ARG(double, rope_theta) = 10000.0;
  /// Llama 3 frequency scaling ("rope_scaling": {"rope_type": "llama3", ...}); factor 0: none. Default 0.
  TORCH_ARG(double, rope_scaling_factor) = 0.0;
  /// Llama 3 scaling: low_freq_factor. Default 1.
  TORCH_ARG(double, rope_low_freq_factor) = 1.0;
  /// Llama 3 scaling: high_freq_factor. Default 4.
  TORCH_ARG(double, rope_high_freq_factor) = 4.0;
  /// Llama 3 scaling: original_max_position_embeddings. Default 8192.
  TORCH_ARG(int64_t, rope_original_max_position) = 8192;
  /// Epsilon of RMSNorm. Default 1e-6.
  TORCH_ARG(double, rms_norm_eps) = 1e-6;
  /// Longest sequence the model accepts. Default 2048.
  TORCH_ARG(int64_t, max_position_embeddings) = 2048;
  /// The head reuses the embedding's weight (no lm_head module). Default false.
  TORCH_ARG(bool, tie_word_embeddings) = false;
  /// Biases in q/k/v/o projections. Default false.
  TORCH_ARG(bool, attention_bias) = false;
  /// Biases in the MLP projections. Default false.
  TORCH_ARG(bool, mlp_bias) = false;
  /// Run-time: use edkm's fused SwiGLU (saves only its input for backward). Default true.
  TORCH_ARG(bool, fused_swiglu) = true;
  /// Run-time: activation checkpointing of every decoder layer in training. Default false.
  TORCH_ARG(bool, checkpoint_layers) = false;

 public:
  /// A small model for tests and the CPU demo: 258-token vocabulary (bytes + BOS/EOS),
  /// hidden 128, MLP 352, 2 layers, 4 query heads and 2 key/value heads (GQA), context 256.
  static LlamaConfig tiny();
  /// The LLaMA-7B (LLaMA 1 / 2) shapes: 32000 tokens, hidden 4096, MLP 11008, 32 layers, 32 heads.
  static LlamaConfig llama_7b();
  /// "tiny" or "llama-7b"; throws for other names.
  static LlamaConfig preset(const std::string& name);
  /// Parses the text of a Hugging Face config.json (model_type "llama"), as transformers 4 writes it
  /// ("rope_theta" at the top level, "rope_scaling") and as transformers 5 does ("rope_parameters"
  /// holding rope_theta, rope_type and the scaling fields); a value given in both places must
  /// agree. Missing optional keys get Hugging Face's defaults; a missing required key, a wrong type
  /// or a key that would change the math and is not implemented (a rope type other than default /
  /// llama3, partial_rotary_factor, per-layer-type rope, quantization_config, ...) throws c10::Error
  /// naming it.
  static LlamaConfig from_json(const std::string& json_text);
  /// A config.json text Hugging Face's LlamaConfig reads (transformers 4 and 5: the rope is written in
  /// both forms).
  std::string to_json() const;
  /// head_dim(), or hidden_size / num_attention_heads when 0.
  int64_t resolved_head_dim() const;
  /// Parameters of the model built from this config.
  int64_t num_parameters() const;
  /// Throws c10::Error when a size is not positive or the heads do not divide.
  void validate() const;
};

namespace functional {
/// x / sqrt(mean(x^2, -1) + eps) * weight, computed in fp32 and returned in x's dtype (as
/// Hugging Face's LlamaRMSNorm).
EDKM_API at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
/// cos and sin tables [seq_len, head_dim] for positions start..start+seq_len-1 (fp32), Hugging
/// Face layout (each frequency twice: [f0..f(d/2-1), f0..f(d/2-1)]). A row does not depend on the
/// others: the rows of any range equal those rows of a table from position 0.
EDKM_API std::pair<at::Tensor, at::Tensor> rotary_cos_sin(const LlamaConfig& config, int64_t seq_len,
                                                          c10::Device device = c10::kCPU, int64_t start = 0);
/// x * cos + rotate_half(x) * sin over the last dim; x: [batch, heads, seq, head_dim], cos/sin:
/// [seq, head_dim]. rotate_half([a, b]) = [-b, a].
EDKM_API at::Tensor apply_rotary_embedding(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
/// Causal attention with grouped key/value heads: q [batch, heads, seq, d], k and v
/// [batch, kv_heads, seq, d] (kv_heads divides heads; query head h uses kv head h / (heads /
/// kv_heads)), through at::scaled_dot_product_attention.
EDKM_API at::Tensor causal_gqa_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
/// Mean next-token cross entropy of `logits` [batch, seq, vocab] against `tokens` [batch, seq]
/// (position t predicts token t+1), in fp32.
EDKM_API at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& tokens);
}  // namespace functional

/// Root-mean-square layer norm with a learned scale (named "weight", initialised to ones).
///
/// Example:
///   edkm::RMSNorm norm(4096, 1e-6);
///   auto y = norm(x);  // x: [..., 4096]
class EDKM_API RMSNormImpl : public torch::nn::Cloneable<RMSNormImpl> {
 public:
  explicit RMSNormImpl(int64_t dim, double eps = 1e-6);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);
  int64_t dim;
  double eps;
  at::Tensor weight;
};
TORCH_MODULE(RMSNorm);

/// Grouped-query self-attention with rotary embedding: q_proj, k_proj, v_proj, o_proj.
///
/// Example:
///   edkm::LlamaAttention attn(edkm::LlamaConfig::tiny());
///   auto [cos, sin] = edkm::functional::rotary_cos_sin(edkm::LlamaConfig::tiny(), 16);
///   auto y = attn(x, cos, sin);  // x: [batch, 16, hidden]
class EDKM_API LlamaAttentionImpl : public torch::nn::Cloneable<LlamaAttentionImpl> {
 public:
  explicit LlamaAttentionImpl(LlamaConfig config);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// x: [batch, seq, hidden]; cos/sin from functional::rotary_cos_sin.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
  LlamaConfig config;
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};
TORCH_MODULE(LlamaAttention);

/// SwiGLU MLP: down_proj(silu(gate_proj(x)) * up_proj(x)).
///
/// Example:
///   edkm::LlamaMLP mlp(edkm::LlamaConfig::tiny());
///   auto y = mlp(x);
class EDKM_API LlamaMLPImpl : public torch::nn::Cloneable<LlamaMLPImpl> {
 public:
  explicit LlamaMLPImpl(LlamaConfig config);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);
  LlamaConfig config;
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(LlamaMLP);

/// Pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(.)).
///
/// Example:
///   edkm::LlamaDecoderLayer layer(edkm::LlamaConfig::tiny());
///   auto y = layer(x, cos, sin);
class EDKM_API LlamaDecoderLayerImpl : public torch::nn::Cloneable<LlamaDecoderLayerImpl> {
 public:
  explicit LlamaDecoderLayerImpl(LlamaConfig config);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// Checkpointed (see the top of this header) when config.checkpoint_layers() and grad mode is on.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
  LlamaConfig config;
  LlamaAttention self_attn{nullptr};
  LlamaMLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};

 private:
  at::Tensor forward_plain(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
};
TORCH_MODULE(LlamaDecoderLayer);

/// The decoder stack: embed_tokens, layers, norm. forward(tokens) -> final hidden states.
class EDKM_API LlamaModelImpl : public torch::nn::Cloneable<LlamaModelImpl> {
 public:
  explicit LlamaModelImpl(LlamaConfig config);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// tokens: [batch, seq] int64 -> [batch, seq, hidden].
  at::Tensor forward(const at::Tensor& tokens);
  LlamaConfig config;
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(LlamaModel);

/// The decoder with its language-model head: parameter names as Hugging Face's LlamaForCausalLM.
/// Weights are initialised as Hugging Face does (normal, std 0.02; norms at one).
///
/// Example:
///   edkm::LlamaForCausalLM model(edkm::LlamaConfig::tiny());
///   auto logits = model(tokens);                                   // [batch, seq, vocab]
///   auto loss = edkm::functional::causal_lm_loss(logits, tokens);
class EDKM_API LlamaForCausalLMImpl : public torch::nn::Cloneable<LlamaForCausalLMImpl> {
 public:
  explicit LlamaForCausalLMImpl(LlamaConfig config);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// tokens: [batch, seq] int64 -> logits [batch, seq, vocab].
  at::Tensor forward(const at::Tensor& tokens);
  /// The head applied to hidden states (lm_head, or the tied embedding).
  at::Tensor logits(const at::Tensor& hidden);
  LlamaConfig config;
  LlamaModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};  ///< null when tie_word_embeddings
};
TORCH_MODULE(LlamaForCausalLM);

}  // namespace edkm
