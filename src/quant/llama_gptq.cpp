// Sequential GPTQ of a LLaMA model (see gptq_quantize_llama in edkm/quant/gptq.h): the reference's
// llama.py with true-sequential, on the calibration batch in chunks of sequences.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "edkm/models/llama.h"
#include "edkm/nn/glu.h"
#include "edkm/quant/gptq.h"
#include "quant/gptq_internal.h"

namespace edkm {

namespace detail {

at::Tensor attention_context(LlamaAttentionImpl& attn, const at::Tensor& x, const at::Tensor& cos,
                             const at::Tensor& sin) {
  // LlamaAttentionImpl::forward up to (not including) o_proj.
  const auto& config = attn.config;
  const int64_t b = x.size(0), t = x.size(1), d = config.resolved_head_dim();
  auto heads = [&](const at::Tensor& y, int64_t n) { return y.view({b, t, n, d}).transpose(1, 2); };
  const at::Tensor q =
      functional::apply_rotary_embedding(heads(attn.q_proj(x), config.num_attention_heads()), cos, sin);
  const at::Tensor k =
      functional::apply_rotary_embedding(heads(attn.k_proj(x), config.num_key_value_heads()), cos, sin);
  const at::Tensor v = heads(attn.v_proj(x), config.num_key_value_heads());
  return functional::causal_gqa_attention(q, k, v).transpose(1, 2).reshape({b, t, -1});
}

at::Tensor mlp_hidden(LlamaMLPImpl& mlp, const at::Tensor& x) {
  // LlamaMLPImpl::forward up to (not including) down_proj.
  if (mlp.config.fused_swiglu()) return functional::swiglu(at::cat({mlp.up_proj(x), mlp.gate_proj(x)}, -1));
  return at::silu(mlp.gate_proj(x)) * mlp.up_proj(x);
}

}  // namespace detail

namespace {

struct Quantized {
  double error;
  double bits;  // bits_per_weight x numel
  int64_t numel;
};

Quantized quantize_linear(torch::nn::LinearImpl& linear, const GPTQHessian& h, const GPTQOptions& options) {
  const GPTQResult r = gptq_quantize(linear.weight, h, options);
  linear.weight.copy_(r.weight);
  return {r.error, r.bits_per_weight * static_cast<double>(linear.weight.numel()), linear.weight.numel()};
}

}  // namespace

GPTQReport gptq_quantize_llama(LlamaForCausalLM& model, const at::Tensor& calibration, const GPTQOptions& options,
                               std::function<void(int64_t done, int64_t total)> progress) {
  return detail::gptq_quantize_llama(model, calibration, options, std::move(progress), 4096);
}

namespace detail {

GPTQReport gptq_quantize_llama(LlamaForCausalLM& model, const at::Tensor& calibration, const GPTQOptions& options,
                               std::function<void(int64_t done, int64_t total)> progress, int64_t chunk_tokens) {
  TORCH_CHECK(chunk_tokens >= 1, "gptq_quantize_llama: chunk_tokens must be >= 1, got ", chunk_tokens);
  const auto start = std::chrono::steady_clock::now();
  options.validate();
  TORCH_CHECK(model, "gptq_quantize_llama: the model is empty");
  TORCH_CHECK(calibration.defined() && calibration.dim() == 2 && calibration.scalar_type() == at::kLong,
              "gptq_quantize_llama: calibration must be int64 token ids [batch, seq], got ",
              calibration.defined() ? calibration.scalar_type() : at::ScalarType::Undefined, " ",
              calibration.defined() ? calibration.sizes() : at::IntArrayRef{});
  const LlamaConfig& config = model->config;
  const int64_t batch = calibration.size(0), seq = calibration.size(1), samples = batch * seq;
  TORCH_CHECK(seq >= 1 && seq <= config.max_position_embeddings(), "gptq_quantize_llama: calibration sequences of ",
              seq, " tokens (1..", config.max_position_embeddings(), " allowed)");
  if (calibration.numel() > 0) {  // once, before any work (a forward would say only "index out of range")
    const int64_t lo = calibration.min().item<int64_t>(), hi = calibration.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < config.vocab_size(), "gptq_quantize_llama: calibration token ids span ", lo, "..", hi,
                ", outside the vocabulary 0..", config.vocab_size() - 1);
  }
  // Every check of every layer before any work: a too-small calibration set or a lut_rows that does
  // not divide some layer fails here, with the model untouched.
  const int64_t hidden = config.hidden_size(), attn_width = config.num_attention_heads() * config.resolved_head_dim(),
                kv_width = config.num_key_value_heads() * config.resolved_head_dim(),
                mlp_width = config.intermediate_size();
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {attn_width, hidden}, {kv_width, hidden}, {hidden, attn_width}, {mlp_width, hidden}, {hidden, mlp_width}};
  for (const auto& [rows, cols] : shapes) {
    detail::check_layer(rows, cols, samples, options, "gptq_quantize_llama");
  }

  at::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  auto& decoder = *model->model;
  const c10::Device device = decoder.embed_tokens->weight.device();
  const at::Tensor tokens = calibration.to(device);
  // Chunks of whole sequences, about chunk_tokens tokens each.
  const int64_t per_chunk = std::max<int64_t>(1, chunk_tokens / seq);
  std::vector<at::Tensor> xs;
  for (int64_t b0 = 0; b0 < batch; b0 += per_chunk) {
    xs.push_back(decoder.embed_tokens(tokens.narrow(0, b0, std::min(per_chunk, batch - b0))));
  }
  auto [cos, sin] = functional::rotary_cos_sin(config, seq, device);

  GPTQReport report;
  const int64_t layers = static_cast<int64_t>(decoder.layers->size()), total = 7 * layers;
  int64_t done = 0;
  double bits = 0, numel = 0;
  auto run = [&](const std::string& name, torch::nn::LinearImpl& linear, const GPTQHessian& h) {
    const Quantized q = quantize_linear(linear, h, options);
    report.layer_error.emplace_back(name, q.error);
    bits += q.bits;
    numel += static_cast<double>(q.numel);
    ++done;
    if (progress) progress(done, total);
  };
  const size_t chunks = xs.size();
  for (int64_t i = 0; i < layers; ++i) {
    auto& layer = *decoder.layers[i]->as<LlamaDecoderLayerImpl>();
    auto& attn = *layer.self_attn;
    auto& mlp = *layer.mlp;
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    // q, k, v: from the input layernorm's output.
    std::vector<at::Tensor> normed(chunks);
    GPTQHessian h_qkv(hidden);
    for (size_t c = 0; c < chunks; ++c) {
      normed[c] = layer.input_layernorm(xs[c]);
      h_qkv.add(normed[c]);
    }
    run(prefix + "self_attn.q_proj", *attn.q_proj, h_qkv);
    run(prefix + "self_attn.k_proj", *attn.k_proj, h_qkv);
    run(prefix + "self_attn.v_proj", *attn.v_proj, h_qkv);
    // o: from the attention output with the quantized q, k, v.
    std::vector<at::Tensor> context(chunks);
    GPTQHessian h_o(attn_width);
    for (size_t c = 0; c < chunks; ++c) {
      context[c] = detail::attention_context(attn, normed[c], cos, sin);
      h_o.add(context[c]);
    }
    normed.clear();
    run(prefix + "self_attn.o_proj", *attn.o_proj, h_o);
    // gate, up: from the post-attention layernorm's output after the quantized attention.
    std::vector<at::Tensor> post(chunks);
    GPTQHessian h_gate_up(hidden);
    for (size_t c = 0; c < chunks; ++c) {
      post[c] = layer.post_attention_layernorm(xs[c] + attn.o_proj(context[c]));
      h_gate_up.add(post[c]);
    }
    context.clear();
    run(prefix + "mlp.gate_proj", *mlp.gate_proj, h_gate_up);
    run(prefix + "mlp.up_proj", *mlp.up_proj, h_gate_up);
    // down: from silu(gate) * up of the quantized gate and up.
    GPTQHessian h_down(mlp_width);
    for (size_t c = 0; c < chunks; ++c) h_down.add(detail::mlp_hidden(mlp, post[c]));
    post.clear();
    run(prefix + "mlp.down_proj", *mlp.down_proj, h_down);
    // The quantized layer's output is the next layer's input.
    for (size_t c = 0; c < chunks; ++c) xs[c] = layer.forward(xs[c], cos, sin);
  }
  model->train(was_training);
  report.bits_per_weight = numel > 0 ? bits / numel : 0;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace detail

}  // namespace edkm
