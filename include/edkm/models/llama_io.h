#pragma once
// Hugging Face LLaMA checkpoints (and GGUF files, read into the same model): a directory with config.json and the
// weights in model.safetensors, or in shards listed by model.safetensors.index.json ({"weight_map":
// {"<tensor>": "<shard file>"}}); BF16, F16 or F32 tensors. Reading is strict: every parameter
// must be present with its shape, no unknown tensor may be left over (the rotary tables
// "*.rotary_emb.inv_freq" of old exports are skipped), every shard the index names must exist,
// and each file is validated before a byte of data is read; errors are c10::Error naming the file
// and the tensor. Writing produces what Hugging Face's save_pretrained writes (config.json, one
// file or shards + index), each file atomically.
#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <torch/arg.h>

#include <cstdint>
#include <optional>
#include <string>

#include "edkm/export.h"
#include "edkm/io/file_io.h"  // make_directories, write_text_file, read_text_file
#include "edkm/models/llama.h"

namespace edkm {

/// Options of load_hf_llama.
struct EDKM_API LlamaLoadOptions {
  /// dtype of the model's parameters (the file's tensors are converted). Default fp32.
  TORCH_ARG(at::ScalarType, dtype) = at::kFloat;
  /// Replace the config's num_hidden_layers by this many (the first ones; the tensors of the other
  /// layers are skipped); 0: all. Default 0.
  TORCH_ARG(int64_t, num_layers) = 0;
  /// Run-time switches copied into the config (see LlamaConfig). Defaults true / false.
  TORCH_ARG(bool, fused_swiglu) = true;
  TORCH_ARG(bool, checkpoint_layers) = false;
};

/// Options of save_hf_llama.
struct EDKM_API LlamaSaveOptions {
  /// dtype of the written tensors; std::nullopt: the parameters' own. Default std::nullopt.
  TORCH_ARG(std::optional<at::ScalarType>, dtype) = std::nullopt;
  /// Largest shard in bytes: more tensors than fit are split over model-0000i-of-0000n.safetensors
  /// with an index; one file (model.safetensors) when everything fits. Default 5 GB (as
  /// Hugging Face).
  TORCH_ARG(int64_t, max_shard_bytes) = 5'000'000'000;
};

/// Reads config.json of a checkpoint directory.
///
/// Example:
///   auto config = edkm::load_hf_llama_config("/models/llama-2-7b-hf");
EDKM_API LlamaConfig load_hf_llama_config(const std::string& dir);

/// Builds the model of `dir`'s config.json and loads its weights.
///
/// Example:
///   auto model = edkm::load_hf_llama("/models/llama-2-7b-hf", edkm::LlamaLoadOptions().dtype(at::kBFloat16));
///   auto logits = model(tokens);
EDKM_API LlamaForCausalLM load_hf_llama(const std::string& dir, const LlamaLoadOptions& options = {});

/// Loads the weights of `dir` into an existing model (strict, see the top of this header).
EDKM_API void load_hf_llama_weights(LlamaForCausalLM& model, const std::string& dir);

/// The LlamaConfig of a GGUF file of architecture "llama" (general.architecture), from its
/// llama.* metadata: block_count, embedding_length, feed_forward_length, attention.head_count,
/// attention.head_count_kv, attention.key_length, rope.freq_base, attention.layer_norm_rms_epsilon,
/// context_length; the vocabulary from llama.vocab_size, tokenizer.ggml.tokens or token_embd's rows;
/// tied embeddings when there is no output.weight; biases when the file has them. Another
/// architecture, a mixture of experts, rope scaling or per-frequency rope factors, partial rotary
/// or absurd sizes throw c10::Error naming the file and the key.
///
/// Example:
///   auto config = edkm::load_gguf_llama_config("SmolLM2-135M-Instruct.Q4_1.gguf");
EDKM_API LlamaConfig load_gguf_llama_config(const std::string& path);

/// Builds the model of a LLaMA GGUF file and loads its tensors, dequantized (see edkm/io/gguf.h),
/// under Hugging Face's names (token_embd -> model.embed_tokens, blk.N.attn_q -> model.layers.N.
/// self_attn.q_proj, ffn_gate -> mlp.gate_proj, attn_norm -> input_layernorm, ...), with the rows of
/// Q and K put back in Hugging Face's order (llama.cpp interleaves the two rotary halves of each
/// head). Every tensor is checked (names, shapes, types) before the model is built: a missing,
/// unexpected or misshapen tensor throws and nothing is allocated. One tensor at a time is
/// dequantized, so the peak is the model plus its largest tensor in fp32.
///
/// Example:
///   auto model = edkm::load_gguf_llama("SmolLM2-135M-Instruct.Q4_1.gguf");
///   auto logits = model(tokens);
EDKM_API LlamaForCausalLM load_gguf_llama(const std::string& path, const LlamaLoadOptions& options = {});

/// A Hugging Face directory (load_hf_llama) or a GGUF file (load_gguf_llama), whichever `path` is.
EDKM_API LlamaForCausalLM load_llama(const std::string& path, const LlamaLoadOptions& options = {});

/// Writes `model` as a Hugging Face checkpoint directory (created if missing).
///
/// Example:
///   edkm::save_hf_llama(model, "out/llama", edkm::LlamaSaveOptions().dtype(at::kBFloat16));
EDKM_API void save_hf_llama(const LlamaForCausalLM& model, const std::string& dir,
                            const LlamaSaveOptions& options = {});

/// Writes a LLaMA GGUF file as a Hugging Face directory: config.json and model.safetensors
/// (load_gguf_llama then save_hf_llama) and, when the file carries a byte-level BPE tokenizer
/// (tokenizer.ggml.model "gpt2"), tokenizer.json and tokenizer_config.json (save_hf_tokenizer in
/// edkm/models/tokenizer.h) that transformers' AutoTokenizer loads and that encode as
/// load_gguf_tokenizer(gguf_path) does. Returns whether the tokenizer was written (false for
/// another tokenizer model, e.g. SentencePiece "llama"). The tokenizer and the model are read
/// before anything is written: a file edkm cannot read leaves `dir` untouched.
///
/// Example:
///   edkm::export_gguf_to_hf("SmolLM2-135M-Instruct.Q4_1.gguf", "out/smollm2-hf");
///   // python: AutoModelForCausalLM.from_pretrained("out/smollm2-hf"), AutoTokenizer.from_pretrained(...)
EDKM_API bool export_gguf_to_hf(const std::string& gguf_path, const std::string& dir,
                                const LlamaSaveOptions& options = {});

}  // namespace edkm
