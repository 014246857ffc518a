#include "edkm/models/llama_runtime.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <ATen/Parallel.h>

#if defined(EDKM_WITH_CUDA)
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <type_traits>
#include <vector>

#include "edkm/io/file_io.h"

namespace edkm {

at::Tensor InferenceLinear::forward(const at::Tensor& x) const {
  if (packed) return functional::lut_linear(x, packed->packed, packed->bias);
  TORCH_CHECK(weight.defined(), "edkm: LlamaRuntime: a projection has no weight");
  return at::linear(x.to(weight.scalar_type()), weight, bias.defined() ? bias.to(weight.scalar_type()) : bias)
      .to(at::kFloat);
}

void InferenceLinear::forward_into(const at::Tensor& x, const at::Tensor& out) const {
  if (packed) return functional::lut_linear_out(out, x, packed->packed, packed->bias);
  out.copy_(forward(x));
}

int64_t InferenceLinear::out_features() const {
  return packed ? packed->packed.out_features : (weight.defined() ? weight.size(0) : 0);
}

int64_t InferenceLinear::bytes() const {
  if (packed) return packed->packed.resident_bytes() + (packed->bias.defined() ? packed->bias.nbytes() : 0);
  return (weight.defined() ? weight.nbytes() : 0) + (bias.defined() ? bias.nbytes() : 0);
}

namespace {

// 16 floats as one GCC vector (one zmm, two ymm or four xmm per clone): accumulators that stay in
// registers. Plain float arrays did not: the per-key dot products ended in 16 sequential scalar
// adds through the stack, and the value sums were loaded and stored at every key.
// V16 passes only between the always-inlined helpers of the clones below (GCC reports the ABI of a
// 64-byte vector return when a baseline-ISA function returns one, at the end of the file).
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float V16 __attribute__((vector_size(64)));
typedef uint32_t U16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));
typedef uint16_t H16 __attribute__((vector_size(32)));

// 16 cached key / value elements as fp32: fp32 as is, bf16 (the cache's kBFloat16 option: the top
// 16 bits of an fp32) shifted into place.
inline V16 load16(const float* p) {
  V16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline V16 load16(const uint16_t* p) {
  H16 h;
  std::memcpy(&h, p, sizeof h);
  return reinterpret_cast<V16>(__builtin_convertvector(h, U16) << 16);
}
inline float as_float(float x) { return x; }
inline float as_float(uint16_t b) { return c10::detail::f32_from_bits(b); }
// The sum of the 16 lanes, as a tree (8 + 8, 4 + 4, 2 + 2, 1 + 1).
inline float sum16(V16 v) {
  v += __builtin_shuffle(v, I16{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  v += __builtin_shuffle(v, I16{4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3});
  v += __builtin_shuffle(v, I16{2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1});
  v += __builtin_shuffle(v, I16{1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0});
  return v[0];
}

// The sums of the 16 lanes of a, b, c and e, into out[0..3]: the halves of a and b (then c and e)
// added into one vector, their quarters into one, then the last two levels within it.
inline void sum4x16(V16 a, V16 b, V16 c, V16 e, float* out) {
  const I16 lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const I16 hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  const V16 ab = __builtin_shuffle(a, b, lo8) + __builtin_shuffle(a, b, hi8);  // a's 8 | b's 8
  const V16 ce = __builtin_shuffle(c, e, lo8) + __builtin_shuffle(c, e, hi8);
  const I16 lo4 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const I16 hi4 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  V16 v = __builtin_shuffle(ab, ce, lo4) + __builtin_shuffle(ab, ce, hi4);  // 4 lanes each of a, b, c, e
  v += __builtin_shuffle(v, I16{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
  v += __builtin_shuffle(v, I16{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
  out[0] = v[0];
  out[1] = v[4];
  out[2] = v[8];
  out[3] = v[12];
}

// Part of the attention of G query heads that share one key / value head (grouped-query
// attention), over `keys` cached positions k, v (rows of d; fp32, or bf16 bits): each key and value
// row is loaded once for the G queries. Unnormalised, as flash-decoding splits the keys: for query
// g, m[g] = max_j s_gj (s = q . k_j * scale), l[g] = sum_j exp(s_gj - m[g]), out[g] (d) =
// sum_j exp(s_gj - m[g]) v_j; merge_parts combines the parts. score: G * keys floats of scratch.
// G a compile-time constant so that the accumulators stay in vector registers (a float array did
// not: each key's dot product went through the stack). Cloned for AVX-512, AVX2 and the baseline
// and chosen when the library loads (this file is compiled for baseline x86-64).
template <int G, class T>
inline __attribute__((always_inline)) void attend_part(const float* q, const T* k, const T* v, int64_t keys, int64_t d,
                                                       float scale, float* score, float* m, float* l, float* out) {
  const int64_t d16 = d / 16 * 16;
  float mx[G];
  for (int g = 0; g < G; ++g) mx[g] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  if (d16 == d) {
    // Four keys at a time: their four lane vectors summed together (sum4x16), 13 vector operations
    // instead of 4 x 8 for four separate tree sums.
    for (; j + 4 <= keys; j += 4) {
      const T* kj = k + j * d;
      V16 acc[G][4] = {};
      for (int64_t i = 0; i < d; i += 16) {
        const V16 k0 = load16(kj + i), k1 = load16(kj + d + i), k2 = load16(kj + 2 * d + i),
                  k3 = load16(kj + 3 * d + i);
        for (int g = 0; g < G; ++g) {
          const V16 qg = load16(q + g * d + i);
          acc[g][0] += qg * k0;
          acc[g][1] += qg * k1;
          acc[g][2] += qg * k2;
          acc[g][3] += qg * k3;
        }
      }
      for (int g = 0; g < G; ++g) {
        float s4[4];
        sum4x16(acc[g][0], acc[g][1], acc[g][2], acc[g][3], s4);
        for (int t = 0; t < 4; ++t) {
          score[g * keys + j + t] = s4[t] * scale;
          mx[g] = std::max(mx[g], s4[t] * scale);
        }
      }
    }
  }
  for (; j < keys; ++j) {
    const T* kj = k + j * d;
    V16 acc[G] = {};
    for (int64_t i = 0; i < d16; i += 16) {
      const V16 kv = load16(kj + i);
      for (int g = 0; g < G; ++g) acc[g] += load16(q + g * d + i) * kv;
    }
    for (int g = 0; g < G; ++g) {
      float s = sum16(acc[g]);
      for (int64_t i = d16; i < d; ++i) s += q[g * d + i] * as_float(kj[i]);
      score[g * keys + j] = s * scale;
      mx[g] = std::max(mx[g], s * scale);
    }
  }
  for (int g = 0; g < G; ++g) {
    float sum = 0;
    float* sg = score + g * keys;
    for (int64_t j = 0; j < keys; ++j) sum += (sg[j] = std::exp(sg[j] - mx[g]));
    m[g] = mx[g];
    l[g] = sum;
  }
  // Columns of out in blocks of 32 held in two vector accumulators per query over the keys (head_dim
  // 64 or 128), then 16, then one by one.
  int64_t i0 = 0;
  for (; i0 + 32 <= d; i0 += 32) {
    V16 a0[G] = {}, a1[G] = {};
    for (int64_t j = 0; j < keys; ++j) {
      const T* vj = v + j * d + i0;
      const V16 v0 = load16(vj), v1 = load16(vj + 16);
      for (int g = 0; g < G; ++g) {
        const V16 p = V16{} + score[g * keys + j];
        a0[g] += p * v0;
        a1[g] += p * v1;
      }
    }
    for (int g = 0; g < G; ++g) {
      std::memcpy(out + g * d + i0, &a0[g], 64);
      std::memcpy(out + g * d + i0 + 16, &a1[g], 64);
    }
  }
  for (; i0 + 16 <= d; i0 += 16) {
    V16 a[G] = {};
    for (int64_t j = 0; j < keys; ++j) {
      const V16 vj = load16(v + j * d + i0);
      for (int g = 0; g < G; ++g) a[g] += (V16{} + score[g * keys + j]) * vj;
    }
    for (int g = 0; g < G; ++g) std::memcpy(out + g * d + i0, &a[g], 64);
  }
  for (; i0 < d; ++i0) {
    for (int g = 0; g < G; ++g) {
      float a = 0;
      for (int64_t j = 0; j < keys; ++j) a += score[g * keys + j] * as_float(v[j * d + i0]);
      out[g * d + i0] = a;
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EDKM_ATTEND_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EDKM_ATTEND_CLONES
#endif
// attend_part for any group size: compile-time G up to 8 (every LLaMA's), above that 8 at a time.
template <class T>
inline __attribute__((always_inline)) void attend_group(const float* q, int64_t group, const T* k, const T* v,
                                                        int64_t keys, int64_t d, float scale, float* score, float* m,
                                                        float* l, float* out) {
  for (int64_t g0 = 0; g0 < group; g0 += 8) {
    const int64_t n = std::min<int64_t>(8, group - g0);
    const float* qg = q + g0 * d;
    float *mg = m + g0, *lg = l + g0, *og = out + g0 * d;
    switch (n) {
#define EDKM_ATTEND_CASE(N)                                      \
  case N:                                                        \
    attend_part<N>(qg, k, v, keys, d, scale, score, mg, lg, og); \
    break;
      EDKM_ATTEND_CASE(1)
      EDKM_ATTEND_CASE(2)
      EDKM_ATTEND_CASE(3)
      EDKM_ATTEND_CASE(4)
      EDKM_ATTEND_CASE(5)
      EDKM_ATTEND_CASE(6)
      EDKM_ATTEND_CASE(7)
      EDKM_ATTEND_CASE(8)
#undef EDKM_ATTEND_CASE
    }
  }
}
EDKM_ATTEND_CLONES void attend(const float* q, int64_t group, const float* k, const float* v, int64_t keys, int64_t d,
                               float scale, float* score, float* m, float* l, float* out) {
  attend_group(q, group, k, v, keys, d, scale, score, m, l, out);
}
EDKM_ATTEND_CLONES void attend(const float* q, int64_t group, const uint16_t* k, const uint16_t* v, int64_t keys,
                               int64_t d, float scale, float* score, float* m, float* l, float* out) {
  attend_group(q, group, k, v, keys, d, scale, score, m, l, out);
}

// out (d) = the softmax-weighted sum over all parts: part p holds m, l and its unnormalised sum
// (attend_part) for one query.
void merge_parts(int64_t parts, const float* m, const float* l, const float* acc, int64_t stride, int64_t d,
                 float* out) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t p = 0; p < parts; ++p) mx = std::max(mx, m[p * stride]);
  float total = 0;
  for (int64_t p = 0; p < parts; ++p) total += l[p * stride] * std::exp(m[p * stride] - mx);
  const float inv = 1.0f / total;
  for (int64_t i = 0; i < d; ++i) {
    float a = 0;
    for (int64_t p = 0; p < parts; ++p) a += acc[p * stride * d + i] * std::exp(m[p * stride] - mx);
    out[i] = a * inv;
  }
}

InferenceLinear dense_linear(const torch::nn::Linear& l) {
  InferenceLinear out;
  out.weight = l->weight.detach();
  if (l->bias.defined()) out.bias = l->bias.detach();
  return out;
}

struct CheckpointReader {
  const CompressedCheckpoint& ckpt;
  mutable std::set<std::string> used;  // names read, so that what the config leaves out is refused
  at::Tensor dense(const std::string& name) const {
    used.insert(name);
    const auto it = ckpt.tensors.find(name);
    if (it != ckpt.tensors.end()) {
      const at::Tensor& t = it->second;
      TORCH_CHECK(at::isFloatingType(t.scalar_type()), "edkm: LlamaRuntime: ", name, " is ", t.scalar_type(),
                  ", a model tensor must be floating point");
      at::Tensor f = t.to(at::kFloat).contiguous();
      TORCH_CHECK(at::isfinite(f).all().item<bool>(), "edkm: LlamaRuntime: ", name, " holds NaN or Inf");
      return f;
    }
    const auto p = ckpt.palettes.find(name);
    TORCH_CHECK(p != ckpt.palettes.end(), "edkm: LlamaRuntime: the checkpoint has no tensor ", name);
    return p->second.decompress().to(at::kFloat).contiguous();  // e.g. a clustered norm: rebuilt
  }
  // A 1-D tensor of n values (a norm's weight).
  at::Tensor vector(const std::string& name, int64_t n) const {
    at::Tensor t = dense(name);
    TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "edkm: LlamaRuntime: ", name, " is ", t.sizes(), ", the config needs [",
                n, "]");
    return t;
  }
  bool has(const std::string& name) const { return ckpt.tensors.count(name) || ckpt.palettes.count(name); }
  InferenceLinear linear(const std::string& prefix, bool bias) const {
    InferenceLinear out;
    const std::string w = prefix + ".weight", b = prefix + ".bias";
    at::Tensor bt;
    if (bias) bt = dense(b);
    used.insert(w);
    const auto p = ckpt.palettes.find(w);
    if (p != ckpt.palettes.end() && p->second.shape.size() == 2 && p->second.cluster_dim == 1) {
      out.packed = PalettizedLinear(p->second, bt);
    } else {
      out.weight = dense(w);
      out.bias = bt;
    }
    return out;
  }
  // Refuses a checkpoint tensor the model never read: a config that does not describe this
  // checkpoint (fewer layers, a tied head over a checkpoint with its own) would otherwise run.
  void check_all_used(const LlamaConfig& c) const {
    auto check = [&](const std::string& name) {
      TORCH_CHECK(used.count(name), "edkm: LlamaRuntime: the checkpoint's tensor '", name,
                  "' is not part of the model its config describes (num_hidden_layers ", c.num_hidden_layers(),
                  ", tie_word_embeddings ", c.tie_word_embeddings() ? "true" : "false", ", attention_bias ",
                  c.attention_bias() ? "true" : "false", ", mlp_bias ", c.mlp_bias() ? "true" : "false",
                  "): is it the config.json of this checkpoint?");
    };
    for (const auto& kv : ckpt.tensors) check(kv.first);
    for (const auto& kv : ckpt.palettes) check(kv.first);
  }
};

// Stacks packed projections sharing bits, rows per LUT, scale and bias presence into `out` (one
// GEMV instead of several); the parts are emptied. False (nothing changed) when they cannot be.
bool stack(const std::vector<InferenceLinear*>& ls, InferenceLinear& out) {
  for (const auto* l : ls)
    if (!l->packed) return false;
  const PackedWeight& a = ls.front()->packed->packed;
  const bool bias = ls.front()->packed->bias.defined();
  std::vector<PackedWeight> parts;
  std::vector<at::Tensor> biases;
  for (const auto* l : ls) {
    const PackedWeight& w = l->packed->packed;
    if (w.in_features != a.in_features || w.bits != a.bits || w.rows_per_lut != a.rows_per_lut ||
        w.scale.defined() != a.scale.defined() || l->packed->bias.defined() != bias)
      return false;
    parts.push_back(w);
    if (bias) biases.push_back(l->packed->bias);
  }
  out.packed = PalettizedLinear(PackedWeight::concat_rows(parts), bias ? at::cat(biases) : at::Tensor());
  out.parts = static_cast<int64_t>(ls.size());
  for (auto* l : ls) *l = InferenceLinear{};
  return true;
}

void check_shape(const InferenceLinear& l, int64_t out, int64_t in, const std::string& name) {
  TORCH_CHECK(l.packed || l.weight.dim() == 2, "edkm: LlamaRuntime: ", name, ".weight is ", l.weight.sizes(),
              ", the config needs ", out, " x ", in);
  const at::Tensor& bias = l.packed ? l.packed->bias : l.bias;
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == out), "edkm: LlamaRuntime: ", name, ".bias is ",
              bias.sizes(), ", the config needs [", out, "]");
  const int64_t o = l.packed ? l.packed->packed.out_features : l.weight.size(0);
  const int64_t i = l.packed ? l.packed->packed.in_features : l.weight.size(1);
  TORCH_CHECK(o == out && i == in, "edkm: LlamaRuntime: ", name, " is ", o, " x ", i, ", the config needs ", out, " x ",
              in);
}

}  // namespace

LlamaRuntime::LlamaRuntime(const LlamaForCausalLM& model) : config_(model->config) {
  auto& m = *model->model;
  embed_dense_ = m.embed_tokens->weight.detach();
  device_ = embed_dense_.device();
  for (const auto& item : *m.layers) {
    auto* l = item->as<LlamaDecoderLayerImpl>();
    Layer L;
    L.q = dense_linear(l->self_attn->q_proj);
    L.k = dense_linear(l->self_attn->k_proj);
    L.v = dense_linear(l->self_attn->v_proj);
    L.o = dense_linear(l->self_attn->o_proj);
    L.gate = dense_linear(l->mlp->gate_proj);
    L.up = dense_linear(l->mlp->up_proj);
    L.down = dense_linear(l->mlp->down_proj);
    L.input_norm = l->input_layernorm->weight.detach();
    L.post_norm = l->post_attention_layernorm->weight.detach();
    layers_.push_back(std::move(L));
  }
  norm_ = m.norm->weight.detach();
  tied_ = !model->lm_head;
  if (!tied_) head_ = dense_linear(model->lm_head);
  init_fast_decode();
}

LlamaRuntime::LlamaRuntime(const LlamaConfig& config, const CompressedCheckpoint& ckpt) : config_(config) {
  config_.validate();
  const CheckpointReader r{ckpt, {}};
  const int64_t h = config_.hidden_size(), mi = config_.intermediate_size(), d = config_.resolved_head_dim();
  const int64_t qh = config_.num_attention_heads() * d, kvh = config_.num_key_value_heads() * d;
  const std::string emb = "model.embed_tokens.weight";
  const auto pe = ckpt.palettes.find(emb);
  if (pe != ckpt.palettes.end() && pe->second.cluster_dim == 1) {
    r.used.insert(emb);
    embed_packed_ = PalettizedEmbedding(pe->second);
    TORCH_CHECK(embed_packed_->packed.out_features == config_.vocab_size() && embed_packed_->packed.in_features == h,
                "edkm: LlamaRuntime: ", emb, " does not match vocab ", config_.vocab_size(), " x hidden ", h);
  } else {
    embed_dense_ = r.dense(emb);
    TORCH_CHECK(embed_dense_.dim() == 2 && embed_dense_.size(0) == config_.vocab_size() && embed_dense_.size(1) == h,
                "edkm: LlamaRuntime: ", emb, " is ", embed_dense_.sizes(), ", the config needs ", config_.vocab_size(),
                " x ", h);
  }
  for (int64_t i = 0; i < config_.num_hidden_layers(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer L;
    const bool ab = config_.attention_bias(), mb = config_.mlp_bias();
    L.q = r.linear(p + "self_attn.q_proj", ab);
    L.k = r.linear(p + "self_attn.k_proj", ab);
    L.v = r.linear(p + "self_attn.v_proj", ab);
    L.o = r.linear(p + "self_attn.o_proj", ab);
    L.gate = r.linear(p + "mlp.gate_proj", mb);
    L.up = r.linear(p + "mlp.up_proj", mb);
    L.down = r.linear(p + "mlp.down_proj", mb);
    check_shape(L.q, qh, h, p + "self_attn.q_proj");
    check_shape(L.k, kvh, h, p + "self_attn.k_proj");
    check_shape(L.v, kvh, h, p + "self_attn.v_proj");
    check_shape(L.o, h, qh, p + "self_attn.o_proj");
    check_shape(L.gate, mi, h, p + "mlp.gate_proj");
    check_shape(L.up, mi, h, p + "mlp.up_proj");
    check_shape(L.down, h, mi, p + "mlp.down_proj");
    L.input_norm = r.vector(p + "input_layernorm.weight", h);
    L.post_norm = r.vector(p + "post_attention_layernorm.weight", h);
    stack({&L.q, &L.k, &L.v}, L.qkv);
    stack({&L.gate, &L.up}, L.gate_up);
    layers_.push_back(std::move(L));
  }
  norm_ = r.vector("model.norm.weight", h);
  tied_ = config_.tie_word_embeddings() || !r.has("lm_head.weight");
  if (!tied_) {
    head_ = r.linear("lm_head", false);
    check_shape(head_, config_.vocab_size(), h, "lm_head");
  }
  r.check_all_used(config_);
  init_fast_decode();
}

LlamaRuntime LlamaRuntime::load(const std::string& compressed_path, const std::string& config_path) {
  return LlamaRuntime(LlamaConfig::from_json(read_text_file(config_path)), load_compressed(compressed_path));
}

namespace {

at::Tensor moved(const at::Tensor& t, c10::Device device) { return t.defined() ? t.to(device) : t; }

// RMSNorm on the general path: LibTorch's rms_norm where the weight has the activations' dtype (on
// a GPU one fused kernel, _fused_rms_norm, where functional::rms_norm launches six: square, mean,
// add, rsqrt and two products; the same math composed on the CPU), functional::rms_norm otherwise.
at::Tensor norm_of(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (weight.dim() == 1 && weight.scalar_type() == x.scalar_type())
    return at::rms_norm(x, {weight.size(0)}, weight, eps);
  return functional::rms_norm(x, weight, eps);
}

// The rotary rows of a step for rotate(): sin's first half negated once per step, so that each
// layer's rotation is three kernels on a GPU (a product, a concatenation, an addcmul) where
// functional::apply_rotary_embedding launches five (the negation and the sum too).
at::Tensor signed_sin(const at::Tensor& sin) {
  const int64_t half = sin.size(-1) / 2;
  return at::cat({-sin.narrow(-1, 0, half), sin.narrow(-1, half, half)}, -1);
}

// functional::apply_rotary_embedding(x, cos, sin) with signed = signed_sin(sin):
// x cos + [-x2, x1] sin = x cos + [x2, x1] [-sin1, sin2].
at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin) {
  const int64_t half = x.size(-1) / 2;
  return at::addcmul(x * cos, at::cat({x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1), signed_sin);
}

// "cuda" names the current CUDA device; the tensors made there report it with its index ("cuda:0"),
// and the runtime compares its device with its caches' by equality: so it keeps the indexed name.
c10::Device resolved(c10::Device device) {
  return device.is_cuda() && !device.has_index() ? at::empty({0}, at::TensorOptions().device(device)).device() : device;
}

InferenceLinear moved(const InferenceLinear& l, c10::Device device) {
  InferenceLinear out = l;
  out.weight = moved(l.weight, device);
  out.bias = moved(l.bias, device);
  if (l.packed) out.packed = PalettizedLinear(l.packed->packed.to(device), moved(l.packed->bias, device));
  return out;
}

}  // namespace

LlamaRuntime& LlamaRuntime::to(c10::Device device) {
  device = resolved(device);
  // Moved into a copy (its holders replaced, the modules shared with *this untouched), then swapped
  // in: a move that fails part way (out of device memory) leaves this runtime as it was.
  LlamaRuntime m = *this;
  m.embed_dense_ = moved(embed_dense_, device);
  if (embed_packed_) m.embed_packed_ = PalettizedEmbedding(embed_packed_->packed.to(device));
  m.head_ = moved(head_, device);
  for (Layer& L : m.layers_) {
    for (InferenceLinear* p : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down, &L.qkv, &L.gate_up})
      *p = moved(*p, device);
    L.input_norm = moved(L.input_norm, device);
    L.post_norm = moved(L.post_norm, device);
  }
  m.norm_ = moved(norm_, device);
  m.device_ = device;
  m.init_fast_decode();
  *this = std::move(m);
  return *this;
}

LlamaRuntime& LlamaRuntime::step_graphs(bool enabled) {
#if !defined(EDKM_WITH_CUDA)
  TORCH_CHECK(!enabled || !device_.is_cuda(), "edkm: LlamaRuntime::step_graphs: CUDA graphs need a CUDA build of edkm");
#endif
  step_graphs_choice_ = enabled ? 1 : 0;
  init_fast_decode();
  return *this;
}

LlamaRuntime& LlamaRuntime::fast_decode(bool enabled) {
  fast_decode_enabled_ = enabled;
  init_fast_decode();
  return *this;
}

LlamaRuntime LlamaRuntime::random(const LlamaConfig& config, const RandomWeights& w) {
  config.validate();
  TORCH_CHECK(w.bits() >= 0 && w.bits() <= 8, "edkm: LlamaRuntime::random: bits must be in 0..8 (0: dense), got ",
              w.bits());
  TORCH_CHECK(
      w.bits() > 0 || w.dense_dtype() == at::kFloat || w.dense_dtype() == at::kBFloat16 || w.dense_dtype() == at::kHalf,
      "edkm: LlamaRuntime::random: dense_dtype must be fp32, bf16 or fp16, got ", w.dense_dtype());
  const double sd = 0.02;
  const c10::Device device = resolved(w.device());
  auto linear = [&](int64_t out, int64_t in, bool bias) {
    InferenceLinear l;
    const at::Tensor b = bias ? at::randn({out}, at::TensorOptions().device(device)) * sd : at::Tensor();
    if (w.bits() > 0) {
      l.packed = PalettizedLinear(PackedWeight::random(out, in, w.bits(), w.rows_per_lut(), device, sd), b);
    } else {
      l.weight = (at::randn({out, in}, at::TensorOptions().device(device)) * sd).to(w.dense_dtype());
      l.bias = b;
    }
    return l;
  };
  LlamaRuntime rt;
  rt.config_ = config;
  rt.device_ = device;
  const int64_t h = config.hidden_size(), mi = config.intermediate_size(), d = config.resolved_head_dim();
  const int64_t qh = config.num_attention_heads() * d, kvh = config.num_key_value_heads() * d;
  const at::Tensor ones = at::ones({h}, at::TensorOptions().device(device));
  const InferenceLinear embedding = linear(config.vocab_size(), h, false);
  if (embedding.packed)
    rt.embed_packed_ = PalettizedEmbedding(embedding.packed->packed);
  else
    rt.embed_dense_ = embedding.weight;
  for (int64_t i = 0; i < config.num_hidden_layers(); ++i) {
    Layer L;
    const bool ab = config.attention_bias(), mb = config.mlp_bias();
    L.q = linear(qh, h, ab);
    L.k = linear(kvh, h, ab);
    L.v = linear(kvh, h, ab);
    L.o = linear(h, qh, ab);
    L.gate = linear(mi, h, mb);
    L.up = linear(mi, h, mb);
    L.down = linear(h, mi, mb);
    L.input_norm = ones.clone();
    L.post_norm = ones.clone();
    stack({&L.q, &L.k, &L.v}, L.qkv);
    stack({&L.gate, &L.up}, L.gate_up);
    rt.layers_.push_back(std::move(L));
  }
  rt.norm_ = ones.clone();
  rt.tied_ = config.tie_word_embeddings();
  if (!rt.tied_) rt.head_ = linear(config.vocab_size(), h, false);
  rt.init_fast_decode();
  return rt;
}

namespace {

// A CPU float tensor the decode step can read through a raw pointer.
bool fp32_cpu(const at::Tensor& t) {
  return t.defined() && t.is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

// out = weight * x * rsqrt(mean(x^2) + eps) over n values (functional::rms_norm's math).
void rms_norm_row(const float* x, const float* weight, int64_t n, double eps, float* out) {
  float ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + static_cast<float>(eps));
  for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * (x[i] * r);
}

// x (heads x d) rotated in place at one position: x * cos + [-x2, x1] * sin.
void rotate_heads(float* x, int64_t heads, int64_t d, const float* cos, const float* sin) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * d;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cos[i] - b * sin[i];
      v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
  }
}

}  // namespace

void LlamaRuntime::init_fast_decode() {
#if defined(EDKM_WITH_CUDA)
  const bool graphs_by_default = device_.is_cuda();
#else
  const bool graphs_by_default = false;  // a CPU-only build runs no CUDA graph
#endif
  step_graphs_ = step_graphs_choice_ < 0 ? graphs_by_default : step_graphs_choice_ == 1;
  auto norm_ok = [](const at::Tensor& t) { return fp32_cpu(t) && t.dim() == 1; };
  fast_decode_ = fast_decode_enabled_ && !step_graphs_ && device_.is_cpu() && norm_ok(norm_);
  for (const Layer& L : layers_) fast_decode_ = fast_decode_ && norm_ok(L.input_norm) && norm_ok(L.post_norm);
}

// One token through every layer with the small operations written out (RMSNorm, rotary, the
// attention of one query over the cache, SiLU-gated product, residuals): a decode step is
// dominated by LibTorch's per-operation cost otherwise (~35 small ops per layer). The
// projections still go through InferenceLinear (LUT-GEMV or dense matmul). Same math as forward's
// general path; tests/llama_runtime_test.cpp checks token-by-token against a whole-prompt pass.
at::Tensor LlamaRuntime::decode_one(const at::Tensor& tokens, Cache& cache) const {
  at::NoGradGuard ng;
  const int64_t H = config_.num_attention_heads(), KV = config_.num_key_value_heads(), d = config_.resolved_head_dim();
  const int64_t D = config_.hidden_size(), pos = cache.length, group = H / KV;
  const double eps = config_.rms_norm_eps();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  at::Tensor x = embed(tokens).reshape({1, D}).contiguous();
  at::Tensor h = at::empty({1, D}, at::kFloat), attn = at::empty({1, H * d}, at::kFloat);
  const float* cos = cache.cos.data_ptr<float>() + pos * d;
  const float* sin = cache.sin.data_ptr<float>() + pos * d;
  float* xp = x.data_ptr<float>();
  // The projections' outputs: one buffer each for the step, (re)made when a layer's width differs.
  at::Tensor qkv, kt, vt, o, gate, up, down;
  std::vector<float> part_m, part_l, part_acc;  // the attention's parts: [part][head] (x d)
  auto into = [](const InferenceLinear& lin, const at::Tensor& in, at::Tensor& buffer) {
    if (!buffer.defined() || buffer.size(1) != lin.out_features())
      buffer = at::empty({1, lin.out_features()}, at::kFloat);
    lin.forward_into(in, buffer);
    return buffer.data_ptr<float>();
  };
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    rms_norm_row(xp, L.input_norm.data_ptr<float>(), D, eps, h.data_ptr<float>());
    float *qp, *kp, *vp;  // q, k, v: pointers into the stacked output, or three outputs
    if (L.qkv.parts > 1) {
      qp = into(L.qkv, h, qkv);
      kp = qp + H * d;
      vp = kp + KV * d;
    } else {
      qp = into(L.q, h, qkv);
      kp = into(L.k, h, kt);
      vp = into(L.v, h, vt);
    }
    rotate_heads(qp, H, d, cos, sin);
    rotate_heads(kp, KV, d, cos, sin);
    const int64_t cap = cache.k[l].size(2);
    const bool bf16 = cache.k[l].scalar_type() == at::kBFloat16;
    float* kc = bf16 ? nullptr : cache.k[l].data_ptr<float>();
    float* vc = bf16 ? nullptr : cache.v[l].data_ptr<float>();
    // bf16 cache: its raw bits (the conversion rounds to nearest even, as at::Tensor::to does).
    uint16_t* kb = bf16 ? reinterpret_cast<uint16_t*>(cache.k[l].data_ptr<at::BFloat16>()) : nullptr;
    uint16_t* vb = bf16 ? reinterpret_cast<uint16_t*>(cache.v[l].data_ptr<at::BFloat16>()) : nullptr;
    for (int64_t g = 0; g < KV; ++g) {
      const int64_t at_row = (g * cap + pos) * d;
      if (!bf16) {
        std::copy_n(kp + g * d, d, kc + at_row);
        std::copy_n(vp + g * d, d, vc + at_row);
        continue;
      }
      for (int64_t i = 0; i < d; ++i) {
        kb[at_row + i] = at::BFloat16(kp[g * d + i]).x;
        vb[at_row + i] = at::BFloat16(vp[g * d + i]).x;
      }
    }
    float* ap = attn.data_ptr<float>();
    const int64_t keys = pos + 1;
    // Work items: (key / value head, part of the keys). Each part's G queries read its key and value
    // rows once; the keys are split into parts (flash-decoding) when there are fewer heads than
    // twice the threads, so that the threads share the work evenly; parts of at least 64 keys.
    const int64_t threads = at::get_num_threads();
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>((2 * threads + KV - 1) / KV, keys / 64));
    const int64_t span = (keys + parts - 1) / parts;
    part_m.resize(static_cast<size_t>(parts * H));
    part_l.resize(static_cast<size_t>(parts * H));
    part_acc.resize(static_cast<size_t>(parts * H * d));
    const int64_t grain = std::max<int64_t>(1, 65536 / (span * d * group));
    at::parallel_for(0, KV * parts, grain, [&](int64_t t0, int64_t t1) {
      std::vector<float> score(static_cast<size_t>(group * span));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t g = t / parts, part = t % parts;
        const int64_t j0 = part * span, n = std::min(keys, j0 + span) - j0;
        const int64_t at_head = (g * cap + j0) * d, q0 = g * group;
        float* pm = part_m.data() + part * H + q0;
        float* pl = part_l.data() + part * H + q0;
        float* pa = part_acc.data() + (part * H + q0) * d;
        if (bf16)
          attend(qp + q0 * d, group, kb + at_head, vb + at_head, n, d, scale, score.data(), pm, pl, pa);
        else
          attend(qp + q0 * d, group, kc + at_head, vc + at_head, n, d, scale, score.data(), pm, pl, pa);
      }
    });
    for (int64_t hd = 0; hd < H; ++hd)
      merge_parts(parts, part_m.data() + hd, part_l.data() + hd, part_acc.data() + hd * d, H, d, ap + hd * d);
    const float* op = into(L.o, attn, o);
    for (int64_t i = 0; i < D; ++i) xp[i] += op[i];
    rms_norm_row(xp, L.post_norm.data_ptr<float>(), D, eps, h.data_ptr<float>());
    // silu(gate) * up, written over gate (the first half of a stacked output)
    float *gp, *upp;
    int64_t mi;
    if (L.gate_up.parts > 1) {
      gp = into(L.gate_up, h, gate);
      mi = gate.size(1) / 2;
      upp = gp + mi;
    } else {
      gp = into(L.gate, h, gate);
      upp = into(L.up, h, up);
      mi = gate.size(1);
    }
    for (int64_t i = 0; i < mi; ++i) gp[i] = gp[i] / (1.0f + std::exp(-gp[i])) * upp[i];
    // The down projection reads the first mi values of gate's row (a [1, mi] prefix: contiguous).
    const float* dp = into(L.down, gate.narrow(1, 0, mi), down);
    for (int64_t i = 0; i < D; ++i) xp[i] += dp[i];
  }
  cache.length = pos + 1;
  cache.tokens.push_back(tokens.item<int64_t>());
  rms_norm_row(xp, norm_.data_ptr<float>(), D, eps, h.data_ptr<float>());
  return head(h).reshape({1, config_.vocab_size()});
}

LlamaRuntime::Cache LlamaRuntime::new_cache(int64_t capacity, at::ScalarType dtype) const {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16,
              "edkm: LlamaRuntime: the key/value cache is fp32 or bf16, not ", dtype);
  if (capacity <= 0) capacity = config_.max_position_embeddings();
  TORCH_CHECK(capacity <= config_.max_position_embeddings(), "edkm: LlamaRuntime: cache of ", capacity,
              " positions exceeds max_position_embeddings ", config_.max_position_embeddings());
  Cache c;
  set_rotary(c, capacity);
  for (size_t i = 0; i < layers_.size(); ++i) {
    c.k.push_back(at::zeros({1, config_.num_key_value_heads(), capacity, config_.resolved_head_dim()},
                            at::TensorOptions().dtype(dtype).device(device_)));
    c.v.push_back(at::zeros_like(c.k.back()));
  }
  return c;
}

// The rotary rows live with the cache, sized by its capacity: tables for max_position_embeddings
// would cost 8 * max_positions * head_dim bytes whatever the context used (a 1M-position config:
// +1 GB), and rows per forward cost a dozen LibTorch ops per decoded token.
void LlamaRuntime::set_rotary(Cache& cache, int64_t capacity) const {
  auto [cos, sin] = functional::rotary_cos_sin(config_, capacity, device_);
  cache.cos = cos.contiguous();
  cache.sin = sin.contiguous();
}

void LlamaRuntime::reserve(Cache& cache, int64_t capacity) const {
  const int64_t ctx = config_.max_position_embeddings();
  TORCH_CHECK(cache.k.size() == layers_.size() && cache.v.size() == layers_.size(),
              "edkm: LlamaRuntime::reserve: the cache is not this model's");
  TORCH_CHECK(capacity <= ctx, "edkm: LlamaRuntime: cache of ", capacity, " positions exceeds max_position_embeddings ",
              ctx);
  const int64_t have = cache.k.empty() ? 0 : cache.k[0].size(2);
  if (capacity <= have) return;
  const int64_t grown = std::min(ctx, std::max(capacity, 2 * have));
  set_rotary(cache, grown);
  for (size_t l = 0; l < layers_.size(); ++l)
    for (at::Tensor* t : {&cache.k[l], &cache.v[l]}) {
      at::Tensor bigger = at::zeros({t->size(0), t->size(1), grown, t->size(3)}, t->options());
      bigger.narrow(2, 0, cache.length).copy_(t->narrow(2, 0, cache.length));
      *t = bigger;
    }
}

// ids on the host: a packed table looks rows up from them there, a dense one gets them on its device.
at::Tensor LlamaRuntime::embed(const at::Tensor& ids) const {
  if (embed_packed_) return functional::lut_embedding(ids, embed_packed_->packed);
  return at::embedding(embed_dense_, ids.to(embed_dense_.device())).to(at::kFloat);
}

at::Tensor LlamaRuntime::head(const at::Tensor& h) const {
  if (!tied_) return head_.forward(h);
  if (embed_packed_) return embed_packed_->linear(h);
  return at::linear(h.to(embed_dense_.scalar_type()), embed_dense_).to(at::kFloat);
}

// Where a step's n new positions go: their rotary rows, where their keys and values are written
// (from `start` by narrow, or at the device position `index` by index_copy_: no host value, so
// that a CUDA graph can replay the step), how many cached positions they attend to, and the mask.
struct LlamaRuntime::Place {
  at::Tensor cos, sin;  // [n, head_dim]: sin with its first half negated (see rotate below)
  int64_t start = 0;
  at::Tensor index;  // [1] int64 on the device, or undefined
  int64_t keys = 0;
  std::optional<at::Tensor> mask;
};

at::Tensor LlamaRuntime::run_layers(at::Tensor x, Cache& cache, const Place& at_) const {
  const int64_t H = config_.num_attention_heads(), KV = config_.num_key_value_heads(), d = config_.resolved_head_dim();
  const int64_t n = x.size(1);
  const double eps = config_.rms_norm_eps();
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& L = layers_[l];
    const at::Tensor h = norm_of(x, L.input_norm, eps);
    auto heads = [&](const at::Tensor& y, int64_t count) { return y.view({1, n, count, d}).transpose(1, 2); };
    at::Tensor q, k, v;
    if (L.qkv.parts > 1) {
      // q and k side by side in the stacked output: rotated by one call (the same element-wise math)
      const at::Tensor y = L.qkv.forward(h);
      const at::Tensor qk = rotate(heads(y.narrow(-1, 0, (H + KV) * d), H + KV), at_.cos, at_.sin);
      q = qk.narrow(1, 0, H);
      k = qk.narrow(1, H, KV);
      v = heads(y.narrow(-1, (H + KV) * d, KV * d), KV);
    } else {
      q = rotate(heads(L.q.forward(h), H), at_.cos, at_.sin);
      k = rotate(heads(L.k.forward(h), KV), at_.cos, at_.sin);
      v = heads(L.v.forward(h), KV);
    }
    if (at_.index.defined()) {
      cache.k[l].index_copy_(2, at_.index, k.to(cache.k[l].scalar_type()));
      cache.v[l].index_copy_(2, at_.index, v.to(cache.v[l].scalar_type()));
    } else {
      cache.k[l].narrow(2, at_.start, n).copy_(k);
      cache.v[l].narrow(2, at_.start, n).copy_(v);
    }
    const at::Tensor keys = cache.k[l].narrow(2, 0, at_.keys).to(at::kFloat);
    const at::Tensor values = cache.v[l].narrow(2, 0, at_.keys).to(at::kFloat);
    at::Tensor a;
    if (n == 1 && KV != H) {
      // One token: the query heads that share a key / value head are rows of one query block
      // ([1, KV, H / KV, d]; query head h reads key / value head h / (H / KV), as Hugging Face's
      // repeat_kv), so the cached keys and values are read as they are, not repeated per query head.
      a = at::scaled_dot_product_attention(q.reshape({1, KV, H / KV, d}), keys, values, at_.mask, 0.0,
                                           /*is_causal=*/false)
              .reshape({1, H, 1, d});
    } else {
      a = at::scaled_dot_product_attention(q, keys, values, at_.mask, 0.0, /*is_causal=*/false, std::nullopt,
                                           /*enable_gqa=*/KV != H);
    }
    x = x + L.o.forward(a.transpose(1, 2).reshape({1, n, H * d}));
    const at::Tensor h2 = norm_of(x, L.post_norm, eps);
    if (L.gate_up.parts > 1) {
      const at::Tensor y = L.gate_up.forward(h2);
      const int64_t mi = y.size(-1) / 2;
      x = x + L.down.forward(at::silu(y.narrow(-1, 0, mi)) * y.narrow(-1, mi, mi));
    } else {
      x = x + L.down.forward(at::silu(L.gate.forward(h2)) * L.up.forward(h2));
    }
  }
  return x;
}

at::Tensor LlamaRuntime::forward(const at::Tensor& tokens, Cache& cache, Logits which) const {
  TORCH_CHECK(tokens.dim() == 1 && tokens.scalar_type() == at::kLong && tokens.numel() > 0,
              "edkm: LlamaRuntime::forward: expected a non-empty 1-D int64 tensor of tokens, got ",
              tokens.scalar_type(), " ", tokens.sizes());
  TORCH_CHECK(
      cache.k.size() == layers_.size() && cache.cos.defined() && cache.cos.size(1) == config_.resolved_head_dim(),
      "edkm: LlamaRuntime::forward: the cache is not this model's (make it with new_cache)");
  TORCH_CHECK(cache.k.empty() || (cache.k[0].device() == device_ && cache.cos.device() == device_),
              "edkm: LlamaRuntime::forward: the cache is on ", cache.k.empty() ? device_ : cache.k[0].device(),
              ", the model on ", device_, " (make the cache with new_cache after moving the model)");
  const int64_t n = tokens.numel(), pos = cache.length, capacity = cache.k.empty() ? 0 : cache.k[0].size(2);
  TORCH_CHECK(pos + n <= capacity, "edkm: LlamaRuntime::forward: ", pos, " cached + ", n, " new tokens exceed the ",
              capacity, "-position cache");
  // Checked on the host: on a GPU an id past the table would be a device-side assert, which ends
  // the process's CUDA context, not an error the caller can catch.
  const at::Tensor host_ids = tokens.to(at::kCPU).contiguous();
  const int64_t* id = host_ids.data_ptr<int64_t>();
  const auto [lo, hi] = std::minmax_element(id, id + n);
  TORCH_CHECK(*lo >= 0 && *hi < config_.vocab_size(), "edkm: LlamaRuntime::forward: token ", *lo < 0 ? *lo : *hi,
              " outside the vocabulary of ", config_.vocab_size());
  auto cpu_cache = [](const at::Tensor& t) {
    return t.is_cpu() && t.is_contiguous() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16);
  };
  if (n == 1 && fast_decode_ && !cache.k.empty() && cpu_cache(cache.k[0]) && cpu_cache(cache.v[0]))
    return decode_one(host_ids, cache);
  if (n == 1 && step_graphs_ && !cache.k.empty()) return graph_step(host_ids, cache);
  at::NoGradGuard ng;
  at::Tensor x = embed(host_ids).unsqueeze(0);  // [1, n, hidden]
  Place place;
  place.cos = cache.cos.narrow(0, pos, n);
  place.sin = signed_sin(cache.sin.narrow(0, pos, n));
  place.start = pos;
  place.keys = pos + n;
  const auto positions = at::TensorOptions().dtype(at::kLong).device(device_);
  if (n > 1)  // query i (position pos + i) sees keys 0..pos + i
    place.mask = at::arange(pos + n, positions).unsqueeze(0) <= (at::arange(n, positions) + pos).unsqueeze(1);
  x = run_layers(x, cache, place);
  cache.length = pos + n;
  cache.tokens.insert(cache.tokens.end(), host_ids.data_ptr<int64_t>(), host_ids.data_ptr<int64_t>() + n);
  if (which == Logits::kLast) x = x.narrow(1, n - 1, 1);
  return head(norm_of(x, norm_, config_.rms_norm_eps())).squeeze(0);
}

// The keys a graph step attends to: the positions so far rounded up to a bucket (a graph per
// bucket), the later ones masked.
constexpr int64_t kGraphBucket = 256;

// One token whose position lives in a device tensor: the rotary rows picked, keys and values
// written and the bucket's keys masked on the device, so that the same kernels serve every
// position of a bucket. x [1, 1, hidden] fp32, pos [1] int64, both on the device.
at::Tensor LlamaRuntime::position_step(const at::Tensor& x, const at::Tensor& pos, int64_t keys, Cache& cache) const {
  Place place;
  place.cos = cache.cos.index_select(0, pos);
  place.sin = signed_sin(cache.sin.index_select(0, pos));
  place.index = pos;
  place.keys = keys;
  place.mask = (at::arange(keys, pos.options()) <= pos).unsqueeze(0);  // [1 query, keys]
  return head(norm_of(run_layers(x, cache, place), norm_, config_.rms_norm_eps())).squeeze(0);
}

struct LlamaRuntime::StepGraphs {
  at::Tensor x, pos;         // the graphs' inputs
  const void* k0 = nullptr;  // the cache storage they were captured on
  int64_t capacity = 0;
#if defined(EDKM_WITH_CUDA)
  struct Captured {
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    at::Tensor logits;  // its output buffer
  };
  std::map<int64_t, Captured> graphs;  // by keys attended
#endif
};

at::Tensor LlamaRuntime::graph_step(const at::Tensor& tokens, Cache& cache) const {
  at::NoGradGuard ng;
  const int64_t pos = cache.length, capacity = cache.k[0].size(2);
  const int64_t keys = std::min(capacity, (pos + 1 + kGraphBucket - 1) / kGraphBucket * kGraphBucket);
  auto& g = cache.graphs;
  if (!g || g->k0 != cache.k[0].data_ptr() || g->capacity != capacity) {  // new, or the cache was regrown
    g = std::make_shared<StepGraphs>();
    g->x = at::empty({1, 1, config_.hidden_size()}, cache.cos.options());
    g->pos = at::empty({1}, cache.cos.options().dtype(at::kLong));
    g->k0 = cache.k[0].data_ptr();
    g->capacity = capacity;
  }
  g->x.copy_(embed(tokens).reshape({1, 1, -1}));
  g->pos.fill_(pos);
  at::Tensor logits;
  if (!device_.is_cuda()) {
    logits = position_step(g->x, g->pos, keys, cache);  // the graph's kernels, run directly
  } else {
#if defined(EDKM_WITH_CUDA)
    auto it = g->graphs.find(keys);
    if (it == g->graphs.end()) {
      // Captured on a side stream after one run there (LibTorch's warm-up: cuBLAS handles and
      // workspaces made outside the capture); the run writes this position's keys and values as the
      // replay will. One memory pool for all of a cache's graphs: they never run at once, each
      // keeps its output buffer allocated (another's capture cannot take it), and a replay's output
      // is copied out before any other graph runs.
      const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream();
      const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
      at::cuda::CUDAEvent ready;
      ready.record(current);
      ready.block(side);
      StepGraphs::Captured c;
      c.graph = std::make_unique<at::cuda::CUDAGraph>();
      {
        const c10::cuda::CUDAStreamGuard guard(side);
        position_step(g->x, g->pos, keys, cache);
        if (g->graphs.empty()) {
          c.graph->capture_begin();
        } else {
          c.graph->capture_begin(g->graphs.begin()->second.graph->pool());
        }
        c.logits = position_step(g->x, g->pos, keys, cache);
        c.graph->capture_end();
      }
      at::cuda::CUDAEvent done;
      done.record(side);
      done.block(current);
      it = g->graphs.emplace(keys, std::move(c)).first;
    }
    it->second.graph->replay();
    logits = it->second.logits.clone();  // the next replay overwrites the buffer
#else
    TORCH_CHECK(false, "edkm: LlamaRuntime: CUDA graphs need a CUDA build of edkm");
#endif
  }
  cache.length = pos + 1;
  cache.tokens.push_back(tokens.item<int64_t>());
  return logits;
}

std::vector<int64_t> LlamaRuntime::generate(const std::vector<int64_t>& prompt, const GenerationOptions& o,
                                            const std::function<void(int64_t)>& on_token) const {
  Cache cache = new_cache(1, o.cache_dtype());  // generate reserves what the prompt and output need
  return generate(prompt, o, cache, on_token);
}

std::vector<int64_t> LlamaRuntime::generate(const std::vector<int64_t>& input, const GenerationOptions& o, Cache& cache,
                                            const std::function<void(int64_t)>& on_token) const {
  TORCH_CHECK(!input.empty(), "edkm: LlamaRuntime::generate: empty prompt");
  TORCH_CHECK(o.temperature() >= 0 && std::isfinite(o.temperature()),
              "edkm: GenerationOptions: temperature must be finite and >= 0, got ", o.temperature());
  TORCH_CHECK(o.top_p() > 0 && o.top_p() <= 1, "edkm: GenerationOptions: top_p must be in (0, 1], got ", o.top_p());
  TORCH_CHECK(o.top_k() >= 0, "edkm: GenerationOptions: top_k must be >= 0 (0: all tokens), got ", o.top_k());
  TORCH_CHECK(o.repetition_penalty() > 0, "edkm: GenerationOptions: repetition_penalty must be > 0 (1: none), got ",
              o.repetition_penalty());
  TORCH_CHECK(o.max_new_tokens() >= 0, "edkm: GenerationOptions: max_new_tokens must be >= 0");
  TORCH_CHECK(static_cast<int64_t>(cache.tokens.size()) == cache.length,
              "edkm: LlamaRuntime::generate: the cache holds ", cache.length, " positions but ", cache.tokens.size(),
              " token ids");
  const int64_t ctx = config_.max_position_embeddings(), vocab = config_.vocab_size();
  const int64_t total = cache.length + static_cast<int64_t>(input.size());
  TORCH_CHECK(total <= ctx, "edkm: LlamaRuntime::generate: a prompt of ", total, " tokens does not fit the ", ctx,
              "-token context");
  for (const int64_t t : input)
    TORCH_CHECK(t >= 0 && t < vocab, "edkm: LlamaRuntime::generate: token ", t, " outside the vocabulary of ", vocab);
  // The last generated token is never fed back: input + max_new - 1 more positions at most.
  // (ctx - total first: max_new_tokens may be INT64_MAX, "until a stop token".)
  reserve(cache, total + std::min(ctx - total, std::max<int64_t>(0, o.max_new_tokens() - 1)));
  const int64_t capacity = cache.k.empty() ? 0 : cache.k[0].size(2);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed());
  std::vector<int64_t> out;
  std::vector<int64_t> seen;  // distinct tokens of the sequence so far, for the repetition penalty
  std::vector<char> is_seen(static_cast<size_t>(vocab), 0);
  auto see = [&](int64_t t) {
    if (!is_seen[t]) seen.push_back(t);
    is_seen[t] = 1;
  };
  for (const int64_t t : cache.tokens) see(t);
  for (const int64_t t : input) see(t);
  auto stops = [&](int64_t t) {
    return t == o.eos_id() || std::find(o.stop_ids().begin(), o.stop_ids().end(), t) != o.stop_ids().end();
  };
  at::Tensor logits = forward(at::tensor(input, at::kLong), cache, Logits::kLast).select(0, -1);
  while (static_cast<int64_t>(out.size()) < o.max_new_tokens()) {
    at::Tensor scores = logits.to(at::kCPU, at::kDouble).contiguous();
    double* l = scores.data_ptr<double>();
    const int64_t n = scores.numel();
    // NaN logits would decode as token 0 forever (argmax) or fail deep in multinomial. One pass over
    // the row, like the greedy choice below (LibTorch's isfinite + all took four).
    bool finite = true;
    for (int64_t i = 0; i < n; ++i) finite = finite && std::isfinite(l[i]);
    TORCH_CHECK(finite,
                "edkm: LlamaRuntime::generate: the model produced NaN or Inf "
                "logits at generated token ",
                out.size(),
                " (non-finite weights, or activations that overflow the "
                "cache dtype)");
    if (o.repetition_penalty() != 1) {
      for (const int64_t t : seen) l[t] = l[t] > 0 ? l[t] / o.repetition_penalty() : l[t] * o.repetition_penalty();
    }
    int64_t next;
    if (o.temperature() == 0) {
      next = std::max_element(l, l + n) - l;  // the first of equal maxima, as argmax
    } else {
      if (o.top_k() > 0 && o.top_k() < vocab) {
        const at::Tensor kth = std::get<0>(scores.topk(o.top_k())).min();
        scores.masked_fill_(scores < kth, -std::numeric_limits<double>::infinity());
      }
      // Shifted by the maximum first: a tiny temperature sends the others to -inf, not inf - inf.
      at::Tensor probs = at::softmax((scores - scores.max()) / o.temperature(), -1);
      if (o.top_p() < 1) {
        auto [sorted, order] = probs.sort(/*dim=*/-1, /*descending=*/true);
        const at::Tensor before = sorted.cumsum(-1) - sorted;  // mass of the more likely tokens
        sorted.masked_fill_(before >= o.top_p(), 0.0);
        probs = at::zeros_like(probs).scatter_(-1, order, sorted);
      }
      next = at::multinomial(probs, 1, false, gen).item<int64_t>();
    }
    if (stops(next)) break;
    out.push_back(next);
    see(next);
    if (on_token) on_token(next);
    if (static_cast<int64_t>(out.size()) == o.max_new_tokens() || cache.length >= capacity) break;
    logits = forward(at::tensor(std::vector<int64_t>{next}, at::kLong), cache).select(0, -1);
  }
  return out;
}

int64_t LlamaRuntime::weight_bytes() const {
  int64_t n = embed_packed_ ? embed_packed_->packed.resident_bytes() : embed_dense_.nbytes();
  if (!tied_) n += head_.bytes();
  for (const auto& L : layers_) {
    for (const auto* p : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down, &L.qkv, &L.gate_up}) n += p->bytes();
    n += L.input_norm.nbytes() + L.post_norm.nbytes();
  }
  return n + norm_.nbytes();
}

int64_t LlamaRuntime::decode_bytes() const {
  if (tied_) return weight_bytes();
  return weight_bytes() - (embed_packed_ ? embed_packed_->packed.resident_bytes() : embed_dense_.nbytes());
}

int64_t LlamaRuntime::packed_layers() const {
  int64_t n = embed_packed_ ? 1 : 0;
  if (!tied_ && head_.packed) ++n;
  for (const auto& L : layers_)
    for (const auto* p : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down, &L.qkv, &L.gate_up})
      n += p->packed ? p->parts : 0;
  return n;
}

}  // namespace edkm
