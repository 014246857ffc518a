#pragma once
// Inference of a LLaMA with a key/value cache: each Linear (and the embedding / tied head) either
// dense or kept palettized (edkm/nn/palettized_linear.h), so a compressed checkpoint runs without
// being decompressed. Batch 1; greedy, temperature, top-k and top-p sampling, a repetition
// penalty, stop tokens; a conversation continued in one cache (generate with a Cache). Packed q, k, v (and gate,
// up) with the same bits and rows per LUT are stacked into one weight and run as one GEMV. On the
// CPU a one-token step runs a written-out decode step; on a GPU (to(at::kCUDA)) every step runs
// LibTorch operations and the CUDA LUT kernels.
//
// Example:
//   auto rt = edkm::LlamaRuntime::load("out/model.edkm.safetensors", "out/config.json");
//   auto ids = rt.generate(tokenizer->encode("Once upon a time"),
//                          edkm::GenerationOptions().max_new_tokens(32).eos_id(tokenizer->eos_id()));
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "edkm/export.h"
#include "edkm/io/checkpoint.h"
#include "edkm/models/llama.h"
#include "edkm/nn/palettized_linear.h"

namespace edkm {

struct EDKM_API GenerationOptions {
  /// Tokens to generate at most. Default 32.
  TORCH_ARG(int64_t, max_new_tokens) = 32;
  /// Softmax temperature; 0: greedy (argmax). Default 0.
  TORCH_ARG(double, temperature) = 0.0;
  /// Nucleus sampling: the smallest set of tokens whose probability reaches top_p. Default 1.
  TORCH_ARG(double, top_p) = 1.0;
  /// Seed of the sampling. Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Stop at this token (not returned); -1: never. Default -1.
  TORCH_ARG(int64_t, eos_id) = -1;
  /// More tokens to stop at (not returned), e.g. a chat format's end of turn. Default none.
  TORCH_ARG(std::vector<int64_t>, stop_ids) = {};
  /// Sample among the top_k most likely tokens only (ties at the k-th logit kept); 0: all.
  /// Default 0.
  TORCH_ARG(int64_t, top_k) = 0;
  /// Penalty on every token already in the prompt or the output (Hugging Face's
  /// RepetitionPenaltyLogitsProcessor): its logit divided by it when positive, multiplied when
  /// negative, before the temperature, top_k and top_p; applies to greedy decoding too. 1: none.
  /// Default 1.
  TORCH_ARG(double, repetition_penalty) = 1.0;
  /// The key/value cache a generate() without one allocates: kFloat, or kBFloat16 (half the
  /// memory and the bytes a long context reads per token; keys and values rounded to bf16).
  /// Default kFloat.
  TORCH_ARG(at::ScalarType, cache_dtype) = at::kFloat;
};

/// The weights of LlamaRuntime::random: a model of a config's shapes for speed and memory
/// measurements without a checkpoint (its output is noise).
struct EDKM_API RandomWeights {
  /// Bits of every projection, the embedding and the head, kept packed with random indices and
  /// LUTs; 0: dense weights of dense_dtype. Default 0.
  TORCH_ARG(int64_t, bits) = 0;
  /// Rows sharing one LUT (0: one per tensor); it must divide the rows of every projection, the
  /// embedding and the head. Default 16 (what edkm_llama_compress's demo trains).
  TORCH_ARG(int64_t, rows_per_lut) = 16;
  /// The dense weights' dtype when bits is 0: kFloat, kBFloat16 or kHalf. Default kFloat.
  TORCH_ARG(at::ScalarType, dense_dtype) = at::kFloat;
  /// Where the weights are made (and the runtime runs). Default CPU.
  TORCH_ARG(c10::Device, device) = at::kCPU;
};

/// A projection for inference: a dense weight (shared with a model, not copied) or a packed one.
struct EDKM_API InferenceLinear {
  at::Tensor weight;  ///< dense out x in, or undefined
  PalettizedLinear packed{nullptr};
  at::Tensor bias;                                ///< dense case only (a packed one holds its own)
  int64_t parts = 1;                              ///< projections stacked in it (q, k, v or gate, up run as one GEMV)
  at::Tensor forward(const at::Tensor& x) const;  ///< fp32 in, fp32 out
  /// forward into out ([rows, out_features] contiguous fp32; x contiguous fp32, no gradient): a
  /// packed weight runs functional::lut_linear_out, without allocating.
  void forward_into(const at::Tensor& x, const at::Tensor& out) const;
  int64_t out_features() const;
  int64_t bytes() const;  ///< resident bytes of the weight (and bias)
};

class EDKM_API LlamaRuntime {
  struct StepGraphs;

 public:
  /// The key/value cache of one sequence: per layer [1, kv_heads, capacity, head_dim] fp32 or bf16
  /// on the runtime's device, and the ids of its first `length` positions.
  struct Cache {
    std::vector<at::Tensor> k, v;
    int64_t length = 0;
    std::vector<int64_t> tokens;         ///< the ids fed so far (length of them)
    at::Tensor cos, sin;                 ///< rotary rows of its capacity's positions, [capacity, head_dim] fp32
    std::shared_ptr<StepGraphs> graphs;  ///< step_graphs(true): the steps captured on this cache
  };

  /// A dense model's weights (shared, no copy).
  explicit LlamaRuntime(const LlamaForCausalLM& model);
  /// A compressed checkpoint (edkm/io/checkpoint.h) with Hugging Face names: palettized 2-D weights of
  /// the Linears, the embedding and the head stay packed; the rest is used as stored (fp32).
  LlamaRuntime(const LlamaConfig& config, const CompressedCheckpoint& checkpoint);
  /// load_compressed(path) with the config.json at `config_path`.
  static LlamaRuntime load(const std::string& compressed_path, const std::string& config_path);
  /// A model of `config`'s shapes with random weights (RandomWeights; LibTorch's default generator
  /// of the device, so torch::manual_seed repeats it): norms 1, projections, embedding and head
  /// N(0, 0.02^2) dense or packed, biases where the config has them.
  static LlamaRuntime random(const LlamaConfig& config, const RandomWeights& weights = {});

  /// Moves the weights to `device` and returns *this; caches from new_cache() live there too.
  /// On a CUDA device every step runs LibTorch operations and the CUDA LUT kernels (a one-token
  /// step is the general path, as fast_decode(false)); token ids may be given on the CPU, logits
  /// come back on the device.
  LlamaRuntime& to(c10::Device device);
  c10::Device device() const { return device_; }
  /// Whether a one-token step on the CPU runs the written-out decode step (default true) or the
  /// general path of LibTorch operations (the path a CUDA runtime takes, for checking it on the CPU).
  LlamaRuntime& fast_decode(bool enabled);
  /// One-token steps as CUDA graphs (default: on for a CUDA device in a CUDA build, off on the
  /// CPU): on a CUDA device each step replays a graph of its ~20 kernels per layer (launched by
  /// one call instead of one by one), captured on first use per cache and per bucket of 256
  /// positions; the step attends to the bucket's keys with the later ones masked and takes its
  /// position from a device tensor. On an H100 they decode 4.1x (SmolLM2) and 2.3x (LLaMA-7B
  /// shapes) faster than the operations launched one by one (benchmarks/results/gpu_h100/). On the
  /// CPU the same step runs without a graph (to check it; slower than the written-out step). An
  /// explicit call holds across to().
  LlamaRuntime& step_graphs(bool enabled);
  /// Whether one-token steps take the step_graphs path on this runtime's device now.
  bool step_graphs() const { return step_graphs_; }

  /// capacity 0: max_position_embeddings; dtype kFloat or kBFloat16.
  Cache new_cache(int64_t capacity = 0, at::ScalarType dtype = at::kFloat) const;
  /// Grows `cache` to hold at least `capacity` positions (at most max_position_embeddings; doubling,
  /// so appending stays cheap), keeping what it holds.
  void reserve(Cache& cache, int64_t capacity) const;
  /// Which positions forward() computes logits for.
  enum class Logits : uint8_t {
    kAll,   ///< every new position: [n, vocab]
    kLast,  ///< the last one only: [1, vocab] (a prompt's prefill skips the head for the others)
  };
  /// Appends `tokens` (1-D int64) to the cache; logits fp32 of those positions (see Logits).
  at::Tensor forward(const at::Tensor& tokens, Cache& cache, Logits which = Logits::kAll) const;
  /// Generated ids after `prompt` (prompt not included); on_token is called with each new id.
  std::vector<int64_t> generate(const std::vector<int64_t>& prompt, const GenerationOptions& options,
                                const std::function<void(int64_t)>& on_token = {}) const;
  /// The same continuing the sequence in `cache` (a conversation: only the new turn is computed):
  /// `input` is fed after cache.tokens, the cache grows as needed, and on return it holds the
  /// input and the generated ids but the last one unless generation ended at a stop token. The
  /// repetition penalty sees cache.tokens too. The next call's input is whatever of the
  /// conversation cache.tokens lacks.
  std::vector<int64_t> generate(const std::vector<int64_t>& input, const GenerationOptions& options, Cache& cache,
                                const std::function<void(int64_t)>& on_token = {}) const;
  /// Resident bytes of the weights (packed indices + LUTs for palettized ones).
  int64_t weight_bytes() const;
  /// Bytes of weights one decode step reads: weight_bytes() but an untied embedding (one row of it
  /// is read). Decode at batch 1 is bounded by memory bandwidth / decode_bytes() tokens per second.
  int64_t decode_bytes() const;
  /// Projections (embedding and head included) kept packed.
  int64_t packed_layers() const;
  const LlamaConfig& config() const { return config_; }

 private:
  struct Layer {
    InferenceLinear q, k, v, o, gate, up, down;
    InferenceLinear qkv, gate_up;  ///< packed projections stacked (then q, k, v / gate, up are empty)
    at::Tensor input_norm, post_norm;
  };
  LlamaConfig config_;
  at::Tensor embed_dense_;  ///< vocab x hidden, or undefined when packed
  PalettizedEmbedding embed_packed_{nullptr};
  InferenceLinear head_;  ///< undefined weight and packed: tied to the embedding
  bool tied_ = false;
  std::vector<Layer> layers_;
  at::Tensor norm_;
  c10::Device device_ = at::kCPU;
  bool fast_decode_ = false;         ///< one-token steps run decode_one (CPU, fp32 norms)
  bool fast_decode_enabled_ = true;  ///< fast_decode(bool)
  bool step_graphs_ = false;         ///< in effect: step_graphs_choice_ or, if unset, whether the device is CUDA
  int8_t step_graphs_choice_ = -1;   ///< step_graphs(bool): 0 / 1; -1 not called
  struct Place;
  at::Tensor run_layers(at::Tensor x, Cache& cache, const Place& place) const;
  at::Tensor position_step(const at::Tensor& x, const at::Tensor& pos, int64_t keys, Cache& cache) const;
  at::Tensor graph_step(const at::Tensor& tokens, Cache& cache) const;  // tokens: [1] int64 on the host
  LlamaRuntime() = default;
  void init_fast_decode();
  void set_rotary(Cache& cache, int64_t capacity) const;
  at::Tensor decode_one(const at::Tensor& tokens, Cache& cache) const;
  at::Tensor embed(const at::Tensor& ids) const;  // ids on the host
  at::Tensor head(const at::Tensor& h) const;
};

}  // namespace edkm
