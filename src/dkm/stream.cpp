// The streaming engine (fused, recompute): DKM that never materialises an N x K tensor, for any
// dtype, granularity, per-channel scale and cluster_dim <= 16. Forward: per iteration one pass
// over the weights reducing K-vectors per group (sum_i A_ij x_i, sum_i A_ij, inertia), then one
// pass writing W_soft. Backward: the attention of every iteration is recomputed from the weights
// and the saved centroids C^t (T * K * d numbers per group); one pass for dL/dC^T, one reducing
// pass per earlier iteration for dL/dC^t (adding its level's share of dL/dw), one pass for the
// rest of dL/dw. Memory O(N) + O(T * K * d * G).
// The math (and its derivation) is in kernels/stream_math.h, shared by the CPU and CUDA kernels.
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <limits>
#include <vector>

#include "dkm/internal.h"
#include "kernels/ops.h"

namespace edkm::detail {
namespace {

using kernels::DType;
using kernels::StreamParams;
using kernels::StreamPass;

// Everything a pass needs besides its mode: geometry, options, the saved history.
struct Plan {
  StreamParams base;
  at::Tensor partials;   // (G * chunks) x width, double
  at::Tensor zero_mask;  // K x 1 of the compute type: 0 for centroid 0 under enforce_zero
  Reducer reduce_ranks;  // sharded: sums over the ranks' row blocks

  // Sums of a reducing pass per group: G x width (over every rank's rows when sharded).
  at::Tensor reduce(StreamParams p, const at::Tensor& on) {
    p.partials = partials.data_ptr<double>();
    partials.zero_();
    kernels::ops::stream_pass(p, on);
    auto sums = partials.view({p.groups, p.chunks, p.width}).sum(1);
    if (reduce_ranks) reduce_ranks(sums);
    return sums;
  }
};

Plan make_plan(const at::Tensor& x, const DKMOptions& o, at::ScalarType ct, Reducer reduce) {
  Plan plan;
  plan.reduce_ranks = std::move(reduce);
  auto& p = plan.base;
  p.x = x.data_ptr();
  p.kind = kernels::ops::kernel_dtype(x.scalar_type());
  p.groups = x.size(0);
  p.n = x.size(1);
  p.d = x.size(2);
  p.k = o.n_clusters();
  p.width = p.k * p.d + p.k + 1;
  // CPU: 16 items per thread, handed out one at a time (kernels::StreamQueue), so that a thread
  // the machine slows down takes fewer of them.
  const int64_t parallelism = x.is_cuda() ? 2048 : 16 * static_cast<int64_t>(at::get_num_threads());
  p.chunk = kernels::stream_chunk(p.n, p.groups, p.width, parallelism);
  p.chunks = (p.n + p.chunk - 1) / p.chunk;
  p.tau = o.tau();
  p.zero_threshold = o.zero_threshold();
  p.prune_threshold = o.prune_threshold();
  p.block_zero = o.enforce_zero() && o.prune_threshold() == 0;
  p.blocked = o.zero_threshold() > 0 ? 1.0 / o.zero_threshold() : std::numeric_limits<double>::infinity();
  p.max_iter = static_cast<int32_t>(o.max_iter());
  plan.partials = at::empty({p.groups * p.chunks, p.width}, x.options().dtype(at::kDouble));
  plan.zero_mask = at::ones({p.k, 1}, x.options().dtype(ct));
  if (o.enforce_zero()) plan.zero_mask.select(0, 0).fill_(0.0);
  return plan;
}

class StreamFunction : public torch::autograd::Function<StreamFunction> {
 public:
  // x: G x n x d (any floating dtype, contiguous); centroids: G x K x d (constants).
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& centroids,
                            const DKMOptions* options, DKMOutput* out, const Reducer* reduce) {
    const auto ct = compute_dtype(x);
    Plan plan = make_plan(x, *options, ct, *reduce);
    const auto& b = plan.base;
    const int64_t G = b.groups, K = b.k, d = b.d, T = options->max_iter();
    auto c_hist = at::zeros({G, T + 1, K, d}, x.options().dtype(ct));
    auto inv_s_hist = at::zeros({G, T, K}, x.options().dtype(ct));  // 1 / S_j^t
    c_hist.select(1, 0).copy_(centroids.detach().to(ct) * plan.zero_mask);
    std::vector<int32_t> iters(static_cast<size_t>(G), 0);
    std::vector<double> last(static_cast<size_t>(G), 0.0), cur(static_cast<size_t>(G), 0.0);
    std::vector<char> done(static_cast<size_t>(G), 0);
    auto iters_t = at::empty({G}, x.options().dtype(at::kInt));
    auto copy_iters = [&] { iters_t.copy_(at::from_blob(iters.data(), {G}, at::TensorOptions().dtype(at::kInt))); };
    StreamParams p = b;
    p.iters = iters_t.data_ptr<int32_t>();
    p.c_hist = c_hist.data_ptr();
    p.inv_s_hist = inv_s_hist.data_ptr();
    p.gamma_hist = c_hist.data_ptr();  // unused forward
    int64_t ran = 0;
    for (int64_t t = 0; t < T; ++t) {
      // Every group iterates on its own and stops on its own inertia test, as the dense engine.
      for (int64_t g = 0; g < G; ++g)
        if (!done[g]) iters[g] = static_cast<int32_t>(t + 1);
      copy_iters();
      p.pass = StreamPass::kStats;
      p.level = static_cast<int32_t>(t);
      const auto sums = plan.reduce(p, x);  // G x width
      const auto m = sums.narrow(1, 0, K * d).view({G, K, d});
      const auto s = sums.narrow(1, K * d, K);
      const auto c_new = (m / s.unsqueeze(-1)).to(ct) * plan.zero_mask;
      const auto inertia = sums.select(1, K * d + K).cpu().contiguous();
      const auto* in = inertia.data_ptr<double>();
      auto active = at::from_blob(iters.data(), {G}, at::TensorOptions().dtype(at::kInt)).eq(t + 1).to(x.device());
      auto keep = active.view({G, 1, 1});
      c_hist.select(1, t + 1).copy_(at::where(keep, c_new, c_hist.select(1, t + 1)));
      inv_s_hist.select(1, t).copy_(at::where(active.view({G, 1}), s.reciprocal().to(ct), inv_s_hist.select(1, t)));
      bool all_done = true;
      for (int64_t g = 0; g < G; ++g) {
        if (done[g]) continue;
        cur[g] = in[g];
        if (converged(last[g], cur[g], options->epsilon())) done[g] = 1;
        all_done = all_done && done[g];
        last[g] = cur[g];
      }
      ran = t + 1;
      if (all_done) break;
    }
    auto y = at::empty_like(x);
    p.pass = StreamPass::kOutput;
    p.out = y.data_ptr();
    kernels::ops::stream_pass(p, x);

    auto last_index = at::from_blob(iters.data(), {G}, at::TensorOptions().dtype(at::kInt)).to(at::kLong);
    auto final_index = (at::arange(G, last_index.options()) * (T + 1) + last_index).to(x.device());
    out->centroids = c_hist.view({G * (T + 1), K, d}).index_select(0, final_index);
    out->iterations = ran;
    double inertia_sum = 0;
    for (double v : cur) inertia_sum += v;
    out->inertia = inertia_sum;

    ctx->save_for_backward({x});
    ctx->saved_data["c_hist"] = c_hist;
    ctx->saved_data["inv_s_hist"] = inv_s_hist;
    ctx->saved_data["iters"] = iters_t;
    ctx->saved_data["state"] = engine_state(*options, *reduce);
    ctx->saved_data["ran"] = ran;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto x = ctx->get_saved_variables()[0];
    const auto& state = engine_state(ctx->saved_data["state"]);
    const DKMOptions& options = state.options;
    const auto ct = compute_dtype(x);
    const auto c_hist = ctx->saved_data["c_hist"].toTensor(), inv_s_hist = ctx->saved_data["inv_s_hist"].toTensor();
    const auto iters_t = ctx->saved_data["iters"].toTensor();
    const int64_t ran = ctx->saved_data["ran"].toInt();
    Plan plan = make_plan(x, options, ct, state.reduce);
    const auto& b = plan.base;
    const int64_t G = b.groups, K = b.k, d = b.d, T = options.max_iter();
    const auto gy = grads[0].to(x.scalar_type()).contiguous();
    auto gamma_hist = at::zeros({G, T + 1, K, d}, x.options().dtype(ct));
    StreamParams p = b;
    p.grad = gy.data_ptr();
    p.iters = iters_t.data_ptr<int32_t>();
    p.c_hist = c_hist.data_ptr();
    p.inv_s_hist = inv_s_hist.data_ptr();
    p.gamma_hist = gamma_hist.data_ptr();

    // dL/dC^{T_g} of every group, placed at its own last level.
    p.pass = StreamPass::kGammaLast;
    const auto gamma_last = plan.reduce(p, x).narrow(1, 0, K * d).view({G, K, d}).to(ct) * plan.zero_mask;
    const auto last_index = (at::arange(G, iters_t.options().dtype(at::kLong)) * (T + 1) + iters_t.to(at::kLong));
    gamma_hist.view({G * (T + 1), K, d}).index_copy_(0, last_index, gamma_last);
    // dL/dC^t for t = T-1 .. 1 (groups with fewer iterations contribute zeros and never read it).
    // Fused gradient (fp32 / fp64 vectors): each reducing pass also adds its level's share of
    // dL/dx from the attention row it computes anyway, so the last pass runs level 0 only: 2T + 2
    // attention rows per vector and step instead of 3T + 1. bf16 / fp16 vectors keep one pass over
    // every level, so that the shares are not rounded to 16 bits before they are summed.
    const bool fused = x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble;
    auto dx = fused ? at::zeros_like(x) : at::empty_like(x);
    for (int64_t t = ran - 1; t >= 1; --t) {
      p.pass = StreamPass::kReduce;
      p.level = static_cast<int32_t>(t);
      p.out = fused ? dx.data_ptr() : nullptr;
      const auto gamma_t = plan.reduce(p, x).narrow(1, 0, K * d).view({G, K, d}).to(ct) * plan.zero_mask;
      const auto active = iters_t.gt(t).view({G, 1, 1});  // others keep their own dL/dC^{T_g}
      gamma_hist.select(1, t).copy_(at::where(active, gamma_t, gamma_hist.select(1, t)));
    }
    p.pass = StreamPass::kGradInput;
    p.out = dx.data_ptr();
    p.grad_levels = fused ? 1 : static_cast<int32_t>(T);
    p.accumulate = fused;
    kernels::ops::stream_pass(p, x);
    return {dx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::string streaming_unsupported(const at::Tensor& w, const ClusterLayout& l, const DKMOptions& o) {
  if (l.cluster_dim > kernels::kStreamMaxDim)
    return "it supports cluster_dim up to " + std::to_string(kernels::kStreamMaxDim) + ", got " +
           std::to_string(l.cluster_dim);
  return kernels::ops::unsupported_device(w);
}

DKMOutput stream_cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                         const at::Tensor& scale, const ClusterLayout& l, const Reducer& reduce) {
  // Per-element vectors without a scale are a view of the weight in its own dtype (no copy);
  // otherwise the vectors are formed in the compute dtype, as the dense engine does.
  const auto ct = compute_dtype(weight);
  const at::Tensor s = scale.defined() ? scale.to(ct) : scale;
  const at::Tensor x = l.cluster_dim == 1 && !s.defined() ? weight.contiguous().view({l.groups, l.vectors, 1})
                                                          : functional::to_vectors(weight.to(ct), l, s).contiguous();
  DKMOutput out;
  auto y = StreamFunction::apply(x, centroids, &options, &out, &reduce);
  out.weight = functional::from_vectors(y, weight.sizes(), l, s).to(weight.scalar_type());
  return out;
}

}  // namespace edkm::detail
