// GPTQ (edkm/quant/gptq.h) against a plain restatement of the algorithm (explicit inverse-Hessian
// updates, no lazy batches), its layer-output error against round-to-nearest on the same grid,
// the LUT grid, bad inputs, and sequential GPTQ of a small LLaMA.
#include <ATen/ATen.h>
#include <edkm/dkm/kmeans.h>
#include <edkm/models/llama.h>
#include <edkm/quant/gptq.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "quant/gptq_internal.h"
#include "test_util.h"

namespace {

using edkm::GPTQHessian;
using edkm::GPTQOptions;
using edkm::QuantGrid;
using edkm::test::expect_error;

const auto f64 = at::TensorOptions().dtype(at::kDouble);

at::Generator gen(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

// n x cols inputs x = z A with a random A: H = 2/n x^T x is far from diagonal. `dead` columns of
// x are zero (diag(H) = 0).
at::Tensor correlated_inputs(int64_t n, int64_t cols, uint64_t seed, std::vector<int64_t> dead = {}) {
  auto g = gen(seed);
  const at::Tensor z = at::randn({n, cols}, g, f64);
  const at::Tensor a = at::randn({cols, cols}, g, f64) / std::sqrt(static_cast<double>(cols)) + at::eye(cols, f64);
  at::Tensor x = at::mm(z, a);
  for (int64_t c : dead) x.select(1, c).zero_();
  return x;
}

GPTQHessian hessian_of(const at::Tensor& x) {
  GPTQHessian h(x.size(1));
  h.add(x);
  return h;
}

double layer_error(const at::Tensor& w, const at::Tensor& q, const at::Tensor& h) {
  const at::Tensor d = w.to(at::kDouble) - q.to(at::kDouble);
  return at::trace(at::mm(at::mm(d, h), d.t())).item<double>();
}

// Nearest of a row's centroids (the lower index on a tie), by exhaustive search.
at::Tensor nearest_in(const at::Tensor& w, const at::Tensor& luts, int64_t lut_rows) {
  const at::Tensor c = luts.repeat_interleave(lut_rows, 0);                         // rows x K
  const at::Tensor idx = (w.unsqueeze(2) - c.unsqueeze(1)).abs().argmin(2, false);  // rows x cols
  return at::gather(c, 1, idx);
}

// GPTQ as the paper states it, without lazy batches: for each column in order, quantize it,
// spread its error over the later columns with the current inverse Hessian, then remove the
// column from the inverse Hessian (Gaussian elimination). Groups as in edkm/quant/gptq.h: computed when
// a group starts, from the updated weights; static (up front, on the original column groups)
// with act_order or group_size 0. kLut takes the LUTs of `luts` (their making is tested apart).
at::Tensor reference_gptq(at::Tensor w, at::Tensor h, const GPTQOptions& o, const at::Tensor& luts = {}) {
  w = w.to(at::kDouble).clone();
  h = h.clone();
  const int64_t rows = w.size(0), cols = w.size(1), maxq = o.levels() - 1;
  const at::Tensor dead = h.diagonal().eq(0);
  h.diagonal().masked_fill_(dead, 1.0);
  w.masked_fill_(dead.unsqueeze(0), 0.0);
  const bool uniform = o.grid() == QuantGrid::kUniform;
  const int64_t gs = o.group_size() > 0 ? std::min(o.group_size(), cols) : cols, groups = (cols + gs - 1) / gs;
  const bool static_groups = o.act_order() || o.group_size() == 0;
  at::Tensor scales = at::zeros({rows, groups}, f64), zeros = at::zeros({rows, groups}, f64);
  if (uniform && static_groups) {
    for (int64_t g = 0; g < groups; ++g) {
      at::Tensor s, z;
      edkm::detail::uniform_params(w.narrow(1, g * gs, std::min(gs, cols - g * gs)), maxq, s, z);
      scales.select(1, g).copy_(s);
      zeros.select(1, g).copy_(z);
    }
  }
  at::Tensor perm = at::arange(cols, at::kLong);
  if (o.act_order()) perm = std::get<1>(at::sort(h.diagonal(), /*stable=*/true, 0, /*descending=*/true));
  w = w.index_select(1, perm);
  h = h.index_select(0, perm).index_select(1, perm);
  h.diagonal().add_(o.damp() * h.diagonal().mean().item<double>());
  at::Tensor hinv = at::linalg_inv(h);
  at::Tensor q = at::zeros_like(w);
  for (int64_t j = 0; j < cols; ++j) {
    const int64_t col = perm[j].item<int64_t>();
    const at::Tensor wj = w.select(1, j).clone();
    at::Tensor qj;
    if (uniform) {
      if (!static_groups && j % gs == 0) {
        at::Tensor s, z;
        edkm::detail::uniform_params(w.narrow(1, j, std::min(gs, cols - j)), maxq, s, z);
        scales.select(1, col / gs).copy_(s);
        zeros.select(1, col / gs).copy_(z);
      }
      const at::Tensor s = scales.select(1, col / gs), z = zeros.select(1, col / gs);
      qj = s * ((at::round(wj / s) + z).clamp(0, static_cast<double>(maxq)) - z);
    } else {
      qj = nearest_in(wj.unsqueeze(1), luts, o.lut_rows() > 0 ? o.lut_rows() : rows).squeeze(1);
    }
    q.select(1, j).copy_(qj);
    const double d = hinv[j][j].item<double>();
    const at::Tensor e = (wj - qj) / d;
    if (j + 1 < cols) w.narrow(1, j + 1, cols - j - 1).sub_(at::outer(e, hinv[j].narrow(0, j + 1, cols - j - 1)));
    hinv = hinv - at::outer(hinv.select(1, j), hinv.select(0, j)) / d;
  }
  return q.index_select(1, at::argsort(perm));
}

int64_t distinct(const at::Tensor& t) { return std::get<0>(at::_unique(t.contiguous())).numel(); }

at::Tensor random_weight(int64_t rows, int64_t cols, uint64_t seed) {
  return at::randn({rows, cols}, gen(seed), f64) * 0.02;
}

TEST(GPTQ, UniformEqualsThePlainAlgorithm) {
  const int64_t rows = 16, cols = 64;
  const GPTQHessian h = hessian_of(correlated_inputs(256, cols, 7, {5, 40}));
  int cases = 0;
  for (int64_t bits : {2, 3, 4}) {
    for (int64_t group : {16, 0, 24}) {  // 24: a narrower last group (64 = 2 x 24 + 16)
      for (bool act : {false, true}) {
        for (int64_t block : {5, 16, 128}) {
          const auto o = GPTQOptions(bits).group_size(group).act_order(act).block_size(block);
          const at::Tensor w = random_weight(rows, cols, 100 + bits);
          const auto r = edkm::gptq_quantize(w, h, o);
          const at::Tensor ref = reference_gptq(w, h.hessian(), o);
          EXPECT_LE((r.weight - ref).abs().max().item<double>(), 1e-9)
              << "bits " << bits << " group " << group << " act_order " << act << " block " << block;
          // The codes and the scale/zero reproduce the weight.
          const int64_t gs = group > 0 ? group : cols;
          const at::Tensor col_group = at::arange(cols, at::kLong).div(gs, "floor").unsqueeze(0).expand({rows, cols});
          const at::Tensor s = at::gather(r.scales, 1, col_group), z = at::gather(r.zeros, 1, col_group);
          EXPECT_LE((s * (r.codes.to(at::kDouble) - z) - r.weight).abs().max().item<double>(), 1e-12);
          EXPECT_LE(r.codes.max().item<int64_t>(), (1 << bits) - 1);
          EXPECT_EQ(r.codes.scalar_type(), at::kByte);
          ++cases;
        }
      }
    }
  }
  EXPECT_EQ(cases, 54);
}

TEST(GPTQ, LutEqualsThePlainAlgorithm) {
  const int64_t rows = 16, cols = 64;
  const GPTQHessian h = hessian_of(correlated_inputs(256, cols, 8, {3}));
  for (int64_t bits : {2, 3}) {
    for (int64_t lut_rows : {1, 4, 0}) {  // 0: one LUT per tensor
      for (bool act : {false, true}) {
        const auto o = GPTQOptions(bits).grid(QuantGrid::kLut).lut_rows(lut_rows).act_order(act).block_size(16);
        const at::Tensor w = random_weight(rows, cols, 200 + bits);
        const auto r = edkm::gptq_quantize(w, h, o);
        EXPECT_LE((r.weight - reference_gptq(w, h.hessian(), o, r.luts)).abs().max().item<double>(), 1e-9)
            << "bits " << bits << " lut_rows " << lut_rows << " act_order " << act;
      }
    }
  }
}

TEST(GPTQ, LutGridValuesAreTheGroupsCentroids) {
  const int64_t rows = 12, cols = 48, lut_rows = 3;
  const at::Tensor x = correlated_inputs(128, cols, 9, {0});
  const GPTQHessian h = hessian_of(x);
  const at::Tensor w = random_weight(rows, cols, 9).to(at::kFloat);
  for (int64_t bits : {1, 2, 3}) {
    const auto r = edkm::gptq_quantize(w, h, GPTQOptions(bits).grid(QuantGrid::kLut).lut_rows(lut_rows));
    const int64_t k = int64_t{1} << bits;
    ASSERT_EQ(r.luts.sizes(), (std::vector<int64_t>{rows / lut_rows, k}));
    EXPECT_EQ(r.weight.scalar_type(), at::kFloat);
    EXPECT_LT(r.codes.max().item<int64_t>(), k);
    // Each value is the centroid its code names, in its group's LUT.
    const at::Tensor c = r.luts.repeat_interleave(lut_rows, 0);
    EXPECT_TRUE(at::equal(r.weight, at::gather(c, 1, r.codes.to(at::kLong)).to(at::kFloat)));
    // The LUT is the exact 1-D k-means of the group's (dead-column-zeroed) weights, weighted by diag(H).
    const at::Tensor diag = h.hessian().diagonal();
    for (int64_t g = 0; g < rows / lut_rows; ++g) {
      std::map<double, double> hist;
      const at::Tensor vals = w.to(at::kDouble).narrow(0, g * lut_rows, lut_rows);
      for (int64_t i = 0; i < lut_rows; ++i) {
        for (int64_t j = 1; j < cols; ++j) hist[vals[i][j].item<double>()] += diag[j].item<double>();
      }
      std::vector<double> v, n;
      for (const auto& [value, count] : hist) {
        v.push_back(value);
        n.push_back(count);
      }
      const auto expect = edkm::kmeans::optimal_1d(v.data(), n.data(), static_cast<int64_t>(v.size()), k);
      for (int64_t j = 0; j < k; ++j) EXPECT_NEAR(r.luts[g][j].item<double>(), expect[j], 1e-12);
    }
  }
  EXPECT_DOUBLE_EQ(edkm::lut_bits_per_weight(rows, cols, 2, lut_rows), 2 + 16.0 * 4 / (lut_rows * cols));
}

TEST(GPTQ, LayerErrorNeverAboveRoundToNearest) {
  const int64_t rows = 32, cols = 128;
  int compared = 0;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    const GPTQHessian hess = hessian_of(correlated_inputs(512, cols, 50 + seed));
    const at::Tensor h = hess.hessian();
    const at::Tensor w = random_weight(rows, cols, 60 + seed);
    for (int64_t bits : {2, 3, 4}) {
      for (int64_t group : {32, 0, 40}) {
        for (bool act : {false, true}) {
          const auto r = edkm::gptq_quantize(w, hess, GPTQOptions(bits).group_size(group).act_order(act));
          const double independent = layer_error(w, r.weight, h);
          EXPECT_NEAR(r.error, independent, 1e-9 * independent);
          const double rtn = layer_error(w, edkm::rtn_quantize(w, bits, group), h);
          EXPECT_LE(r.error, rtn) << "seed " << seed << " bits " << bits << " group " << group << " act " << act;
          EXPECT_DOUBLE_EQ(r.bits_per_weight, edkm::uniform_bits_per_weight(rows, cols, bits, group));
          ++compared;
        }
      }
      const auto lut = edkm::gptq_quantize(w, hess, GPTQOptions(bits).grid(QuantGrid::kLut));
      const double independent = layer_error(w, lut.weight, h);
      EXPECT_NEAR(lut.error, independent, 1e-9 * independent);
      EXPECT_LE(lut.error, layer_error(w, nearest_in(w, lut.luts, 1), h)) << "LUT seed " << seed << " bits " << bits;
    }
  }
  EXPECT_EQ(compared, 72);
  EXPECT_DOUBLE_EQ(edkm::uniform_bits_per_weight(rows, cols, 4, 32), 5.0);
  EXPECT_DOUBLE_EQ(edkm::uniform_bits_per_weight(rows, cols, 4, 0), 4.25);
  expect_error([&] { edkm::uniform_bits_per_weight(rows, 0, 4, 0); }, {"cols >= 1"});  // was inf
  expect_error([&] { edkm::lut_bits_per_weight(rows, cols, 9, 0); }, {"bits in 1..8"});
}

TEST(GPTQ, RoundToNearestGrid) {
  // Min-max per row and group, the range including 0, 2^bits levels.
  const at::Tensor w = at::tensor({0.1, 0.2, 0.3, 0.4, -1.0, -0.5, 0.5, 1.0}, f64).reshape({2, 4});
  const at::Tensor q = edkm::rtn_quantize(w, 2, 2);
  // Group [0.1, 0.2]: range [0, 0.2], scale 0.2/3, levels 0, 1/15, 2/15, 0.2.
  EXPECT_NEAR(q[0][0].item<double>(), 0.2 / 3 * 2, 1e-15);  // 0.1 / (0.2/3) = 1.5 -> 2 (ties to even)
  EXPECT_NEAR(q[0][1].item<double>(), 0.2, 1e-15);
  EXPECT_NEAR(q[1][0].item<double>(), -1.0, 1e-15);
  EXPECT_EQ(edkm::rtn_quantize(w.to(at::kFloat), 4, 0).scalar_type(), at::kFloat);
  for (int64_t bits : {1, 3, 8}) {
    const at::Tensor r = edkm::rtn_quantize(random_weight(8, 32, 3), bits, 8);
    for (int64_t i = 0; i < 8; ++i) {
      for (int64_t g = 0; g < 4; ++g) EXPECT_LE(distinct(r[i].narrow(0, g * 8, 8)), 1 << bits);
    }
  }
}

TEST(GPTQ, HessianAccumulates) {
  const at::Tensor x = correlated_inputs(30, 8, 1);
  GPTQHessian h(8);
  EXPECT_EQ(h.samples(), 0);
  EXPECT_TRUE(at::equal(h.hessian(), at::zeros({8, 8}, f64)));
  h.add(x.narrow(0, 0, 12).reshape({3, 4, 8}).to(at::kFloat));
  h.add(x.narrow(0, 12, 18));
  EXPECT_EQ(h.samples(), 30);
  const at::Tensor expect = 2.0 / 30 * at::mm(x.t(), x);
  EXPECT_LE(edkm::test::max_rel(h.hessian(), expect), 1e-6);  // the fp32 part
  EXPECT_EQ(h.hessian().scalar_type(), at::kDouble);
  expect_error([&] { h.add(at::ones({2, 7})); }, {"expected x [..., 8]"});
  expect_error([&] { h.add(at::ones({2, 8}, at::kLong)); }, {"floating"});
}

TEST(GPTQ, CudaInputsGiveTheCpuResult) {
  EDKM_SKIP_WITHOUT_GPU();
  const at::Tensor x = correlated_inputs(256, 64, 4);
  const at::Tensor w = random_weight(16, 64, 4).to(at::kFloat);
  GPTQHessian on_gpu(64);
  on_gpu.add(x.cuda());
  EXPECT_TRUE(on_gpu.hessian().is_cuda());
  const auto o = GPTQOptions(3).group_size(16).block_size(8);
  const auto g = edkm::gptq_quantize(w.cuda(), on_gpu, o);
  const auto c = edkm::gptq_quantize(w, hessian_of(x), o);
  EXPECT_TRUE(g.weight.is_cuda());
  EXPECT_LE((g.weight.cpu() - c.weight).abs().max().item<float>(), 1e-6);
  EXPECT_NEAR(g.error, c.error, 1e-9 * c.error);
}

TEST(GPTQ, BadInputsNameTheProblem) {
  const GPTQHessian h = hessian_of(correlated_inputs(64, 16, 2));
  const at::Tensor w = random_weight(8, 16, 2);
  const GPTQOptions o = GPTQOptions(4).group_size(8);
  expect_error([&] { edkm::gptq_quantize(w.reshape({-1}), h, o); }, {"2-D"});
  expect_error([&] { edkm::gptq_quantize(w.to(at::kInt), h, o); }, {"floating"});
  at::Tensor nan = w.clone();
  nan[1][2] = std::nan("");
  expect_error([&] { edkm::gptq_quantize(nan, h, o); }, {"non-finite"});
  expect_error([&] { edkm::rtn_quantize(nan, 4, 8); }, {"rtn_quantize", "non-finite"});
  expect_error([&] { edkm::gptq_quantize(random_weight(8, 12, 2), h, o); }, {"Hessian size mismatch"});
  expect_error([&] { edkm::gptq_quantize(w, GPTQHessian(16), o); }, {"no calibration"});
  const GPTQHessian few = hessian_of(correlated_inputs(10, 16, 3));
  expect_error([&] { edkm::gptq_quantize(w, few, o); }, {"calibration set too small", "min_samples"});
  EXPECT_NO_THROW(edkm::gptq_quantize(w, few, GPTQOptions(o).min_samples(10)));
  expect_error([&] { edkm::gptq_quantize(w, few, GPTQOptions(o).min_samples(10).damp(0)); }, {"singular"});
  expect_error([&] { edkm::gptq_quantize(w, h, GPTQOptions(4).group_size(-1)); }, {"group_size"});
  expect_error([&] { edkm::gptq_quantize(w, h, GPTQOptions(4).grid(QuantGrid::kLut).lut_rows(3)); }, {"lut_rows"});
  expect_error([&] { edkm::gptq_quantize(w, h, GPTQOptions(0)); }, {"bits"});
  expect_error([&] { edkm::gptq_quantize(w, h, GPTQOptions(9)); }, {"bits"});
  expect_error([&] { edkm::gptq_quantize(w, h, GPTQOptions(4).damp(-1)); }, {"damp"});
  expect_error([&] { edkm::gptq_quantize(w, h, GPTQOptions(4).damp(1e308)); }, {"damp", "[0, 1000]"});
  // All-zero calibration inputs: a zero Hessian would quantize the weight to 0 with error 0.
  edkm::GPTQHessian zeros(w.size(1));
  zeros.add(at::zeros({2 * w.size(1), w.size(1)}));
  expect_error([&] { edkm::gptq_quantize(w, zeros, GPTQOptions(4)); }, {"input features are zero", "Hessian is 0"});
  expect_error([&] { edkm::gptq_quantize(w, h, GPTQOptions(4).block_size(0)); }, {"block_size"});
  expect_error([&] { edkm::rtn_quantize(w, 4, -1); }, {"group_size"});
  expect_error([&] { edkm::rtn_quantize(w, 9, 0); }, {"bits"});
}

// --- LLaMA ----------------------------------------------------------------------------------------

edkm::LlamaConfig small_llama() {
  return edkm::LlamaConfig::tiny()
      .vocab_size(64)
      .hidden_size(32)
      .intermediate_size(64)
      .num_hidden_layers(2)
      .num_attention_heads(4)
      .num_key_value_heads(2)
      .max_position_embeddings(64);
}

std::vector<torch::nn::Linear> linears(edkm::LlamaForCausalLM& m) {
  std::vector<torch::nn::Linear> out;
  for (const auto& l : *m->model->layers) {
    auto& layer = *l->as<edkm::LlamaDecoderLayerImpl>();
    for (auto lin : {layer.self_attn->q_proj, layer.self_attn->k_proj, layer.self_attn->v_proj, layer.self_attn->o_proj,
                     layer.mlp->gate_proj, layer.mlp->up_proj, layer.mlp->down_proj}) {
      out.push_back(lin);
    }
  }
  return out;
}

edkm::LlamaForCausalLM copy_of(const edkm::LlamaForCausalLM& src) {
  edkm::LlamaForCausalLM dst(src->config);
  torch::NoGradGuard ng;
  auto s = src->named_parameters();
  for (auto& p : dst->named_parameters()) p.value().copy_(s[p.key()]);
  return dst;
}

TEST(GPTQ, LlamaLinearInputsAreTheForwardsOwn) {
  torch::manual_seed(3);
  for (bool fused : {true, false}) {
    edkm::LlamaForCausalLM model(small_llama().fused_swiglu(fused));
    torch::NoGradGuard ng;
    auto& layer = *model->model->layers[0]->as<edkm::LlamaDecoderLayerImpl>();
    const at::Tensor x = at::randn({2, 9, 32});
    auto [cos, sin] = edkm::functional::rotary_cos_sin(model->config, 9);
    const at::Tensor ctx = edkm::detail::attention_context(*layer.self_attn, x, cos, sin);
    EXPECT_TRUE(at::equal(layer.self_attn->o_proj(ctx), layer.self_attn->forward(x, cos, sin)));
    EXPECT_TRUE(at::equal(layer.mlp->down_proj(edkm::detail::mlp_hidden(*layer.mlp, x)), layer.mlp->forward(x)));
  }
}

TEST(GPTQ, LlamaSequentialQuantization) {
  for (uint64_t seed : {5, 6, 7}) {
    torch::manual_seed(seed);
    edkm::LlamaForCausalLM reference(small_llama());
    reference->eval();
    const at::Tensor calibration = at::randint(64, {8, 32}, gen(11), at::kLong);
    const at::Tensor held_out = at::randint(64, {4, 32}, gen(12), at::kLong);
    at::Tensor logits;
    {
      torch::NoGradGuard ng;
      logits = reference(held_out);
    }
    for (const auto& o : {GPTQOptions(3).group_size(16), GPTQOptions(2).group_size(0).act_order(true),
                          GPTQOptions(3).grid(QuantGrid::kLut).lut_rows(4)}) {
      const bool uniform = o.grid() == QuantGrid::kUniform;
      edkm::LlamaForCausalLM model = copy_of(reference);
      std::vector<int64_t> ticks;
      const auto report = edkm::gptq_quantize_llama(model, calibration, o, [&](int64_t done, int64_t total) {
        EXPECT_EQ(total, 14);
        ticks.push_back(done);
      });
      ASSERT_EQ(ticks.size(), 14u);
      EXPECT_EQ(ticks.back(), 14);
      ASSERT_EQ(report.layer_error.size(), 14u);
      EXPECT_EQ(report.layer_error[0].first, "model.layers.0.self_attn.q_proj");
      EXPECT_EQ(report.layer_error[13].first, "model.layers.1.mlp.down_proj");
      for (const auto& [name, err] : report.layer_error) EXPECT_TRUE(std::isfinite(err) && err > 0) << name;
      double bits = 0, numel = 0;  // the size-weighted mean over the 14 Linears
      for (const auto& lin : linears(model)) {
        const int64_t rows = lin->weight.size(0), cols = lin->weight.size(1);
        bits += static_cast<double>(rows * cols) *
                (uniform ? edkm::uniform_bits_per_weight(rows, cols, o.bits(), o.group_size())
                         : edkm::lut_bits_per_weight(rows, cols, o.bits(), o.lut_rows()));
        numel += static_cast<double>(rows * cols);
      }
      EXPECT_NEAR(report.bits_per_weight, bits / numel, 1e-12);
      EXPECT_GT(report.bits_per_weight, static_cast<double>(o.bits()));
      EXPECT_GE(report.seconds, 0);
      // At most 2^bits distinct values per row and group (uniform) or per LUT group of rows.
      for (const auto& lin : linears(model)) {
        const at::Tensor w = lin->weight.detach();
        const int64_t rows = w.size(0), cols = w.size(1);
        if (uniform) {
          const int64_t gs = o.group_size() > 0 ? o.group_size() : cols;
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t g = 0; g < cols / gs; ++g) {
              EXPECT_LE(distinct(w[r].narrow(0, g * gs, gs)), o.levels());
            }
          }
        } else {
          for (int64_t g = 0; g < rows / o.lut_rows(); ++g) {
            EXPECT_LE(distinct(w.narrow(0, g * o.lut_rows(), o.lut_rows())), o.levels());
          }
        }
      }
      // The model's output error on held-out tokens is not above round-to-nearest's on the same grid.
      torch::NoGradGuard ng;
      const double gptq_mse = (model(held_out) - logits).square().mean().item<double>();
      edkm::LlamaForCausalLM rtn = copy_of(reference);
      rtn->eval();
      for (auto& lin : linears(rtn)) {
        if (uniform) {
          lin->weight.copy_(edkm::rtn_quantize(lin->weight, o.bits(), o.group_size()));
        } else {
          // Nearest centroid of a LUT of the same size and rows: GPTQ with a diagonal Hessian has no
          // error feedback (U is diagonal) and clusters without sensitivity weights.
          GPTQHessian flat(lin->weight.size(1));
          flat.add(at::eye(lin->weight.size(1)));
          const auto r = edkm::gptq_quantize(lin->weight, flat, o);
          lin->weight.copy_(r.weight);
        }
      }
      const double rtn_mse = (rtn(held_out) - logits).square().mean().item<double>();
      EXPECT_LE(gptq_mse, rtn_mse) << "seed " << seed << " bits " << o.bits() << " grid " << edkm::to_string(o.grid());
      std::cout << "  " << edkm::to_string(o.grid()) << " " << o.bits() << " bits: logits MSE GPTQ " << gptq_mse
                << ", RTN " << rtn_mse << " (" << report.bits_per_weight << " bits/weight, " << report.seconds
                << " s)\n";
    }
    // Too small a calibration set fails before any weight changes.
    edkm::LlamaForCausalLM model = copy_of(reference);
    expect_error([&] { edkm::gptq_quantize_llama(model, calibration.narrow(0, 0, 1), GPTQOptions(4).group_size(16)); },
                 {"calibration set too small"});
    // Token ids outside the vocabulary, and ids of another dtype, are named before any work too.
    auto oov = calibration.clone();
    oov.view({-1})[3] = model->config.vocab_size();
    expect_error([&] { edkm::gptq_quantize_llama(model, oov, GPTQOptions(4).group_size(16)); },
                 {"outside the vocabulary"});
    expect_error([&] { edkm::gptq_quantize_llama(model, calibration.to(at::kInt), GPTQOptions(4).group_size(16)); },
                 {"int64 token ids", "Int"});
    const auto after = linears(model), before = linears(reference);
    for (size_t i = 0; i < after.size(); ++i) EXPECT_TRUE(at::equal(after[i]->weight, before[i]->weight));
  }
}

TEST(GPTQ, LlamaChunksGiveTheSameModel) {
  torch::manual_seed(8);
  edkm::LlamaForCausalLM one(small_llama());
  edkm::LlamaForCausalLM chunked = copy_of(one);
  const at::Tensor calibration = at::randint(64, {6, 32}, gen(13), at::kLong);
  const auto o = GPTQOptions(3).group_size(16);
  const auto a = edkm::gptq_quantize_llama(one, calibration, o);
  const auto b = edkm::detail::gptq_quantize_llama(chunked, calibration, o, {}, 64);  // 3 chunks of 2 sequences
  const auto wa = linears(one), wb = linears(chunked);
  for (size_t i = 0; i < wa.size(); ++i) {
    EXPECT_LE((wa[i]->weight - wb[i]->weight).abs().max().item<float>(), 1e-6) << a.layer_error[i].first;
    EXPECT_NEAR(a.layer_error[i].second, b.layer_error[i].second, 1e-6 * a.layer_error[i].second);
  }
}

}  // namespace
