#pragma once
// Internals of GPTQ shared by gptq.cpp, llama_gptq.cpp and the tests.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

#include "edkm/export.h"
#include "edkm/models/llama.h"
#include "edkm/quant/gptq.h"

EDKM_INTERNAL_BEGIN
namespace edkm::detail {

/// The uniform grid's scale and zero per row of x (rows x n, fp64): the reference's asymmetric
/// min-max quantizer, whose range always includes 0 (an all-zero row gets [-1, 1]).
void uniform_params(const at::Tensor& x, int64_t maxq, at::Tensor& scale, at::Tensor& zero);

/// The checks of a rows x cols layer with `samples` calibration vectors under `options`: calibration
/// size, group_size / lut_rows divisibility. Messages start with `what`.
void check_layer(int64_t rows, int64_t cols, int64_t samples, const GPTQOptions& options, const char* what);

/// The input of o_proj: the attention's output before the projection, [batch, seq, heads * head_dim],
/// computed as LlamaAttentionImpl::forward does. x: the input-layernorm output [batch, seq, hidden].
at::Tensor attention_context(LlamaAttentionImpl& attn, const at::Tensor& x, const at::Tensor& cos,
                             const at::Tensor& sin);

/// The input of down_proj: silu(gate_proj(x)) * up_proj(x). x: the post-attention-layernorm output.
at::Tensor mlp_hidden(LlamaMLPImpl& mlp, const at::Tensor& x);

/// gptq_quantize_llama with the calibration batch in chunks of whole sequences of about
/// `chunk_tokens` tokens (at least one sequence); the public form uses 4096.
GPTQReport gptq_quantize_llama(LlamaForCausalLM& model, const at::Tensor& calibration, const GPTQOptions& options,
                               std::function<void(int64_t done, int64_t total)> progress, int64_t chunk_tokens);

}  // namespace edkm::detail
EDKM_INTERNAL_END
