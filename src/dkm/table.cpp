// The table engine (uniquification, index-free): DKM over the 65,536 bit patterns of a 16-bit
// weight, weighted by how many weights carry each pattern (in fp64 when U x K <= 4M). No sort and no per-weight index
// list: a weight's own bits index its table entry. Memory O(N) + O(T * U * K), U <= 65,536.
//
// Backward, exact per weight (DESIGN.md §2): with g_i = dL/dW_soft_i, G_b = sum_{bits(w_i)=b} g_i,
// a_b = dh_b/dv_b at fixed centroids, e_b = d(sum_b G_b h_b)/dv_b through the small graph:
//   dL/dw_i = g_i * a_b + (e_b - G_b * a_b) / n_b.
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <limits>

#include "dkm/internal.h"
#include "kernels/ops.h"

namespace edkm::detail {
namespace {

using kernels::DType;
using kernels::kTableSize;

constexpr int64_t kIndexChunk = int64_t{1} << 16;  // weights per step of the index-list paths

}  // namespace

std::string table_unsupported(const at::Tensor& w, const ClusterLayout& l, const DKMOptions& o) {
  const auto st = w.scalar_type();
  if (st == at::kFloat && !o.table_fp32_as_bf16())
    return "it needs a 16-bit weight (bfloat16 or float16), got float32; set table_fp32_as_bf16(true) to cluster "
           "the weight's bf16 rounding";
  if (st != at::kBFloat16 && st != at::kHalf && st != at::kFloat)
    return std::string("it needs a 16-bit weight (bfloat16 or float16), got ") + c10::toString(st);
  if (l.groups != 1) return "it needs a per-tensor LUT, got " + to_string(o.granularity()) + " granularity";
  if (l.cluster_dim != 1) return "it needs cluster_dim 1";
  if (o.per_channel_scale()) return "per-channel scaling changes the values row by row";
  return kernels::ops::unsupported_device(w);
}

namespace {

// The value of every pattern, as float: patterns are bf16 (also for fp32 opted in) or fp16 words.
at::Tensor pattern_values(DType kind, const at::TensorOptions& opts) {
  auto words = at::arange(kTableSize, opts.dtype(at::kInt)).to(at::kShort);  // 0..65535 as int16 bits
  return words.view(kind == DType::kF16 ? at::kHalf : at::kBFloat16).to(at::kFloat);
}

// Expands a U-entry table to the 65,536 patterns (zero where no weight has the pattern).
// The soft value of every bit pattern: those of the table, NaN for the rest (no weight has the
// finite ones; a NaN or Inf weight, left out of the table, gets NaN, not a finite stand-in).
at::Tensor full_table(const at::Tensor& compact, const at::Tensor& uidx) {
  return at::full({kTableSize}, std::numeric_limits<float>::quiet_NaN(), compact.options().dtype(at::kFloat))
      .index_copy_(0, uidx, compact.to(at::kFloat));
}

class TableFunction : public torch::autograd::Function<TableFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& weight,
                            const at::Tensor& centroids, const DKMOptions* options, DKMOutput* out,
                            const Reducer* reduce) {
    const auto w = weight.contiguous();
    const DType dtype = kernels::ops::kernel_dtype(w.scalar_type());
    auto counts = kernels::ops::table_histogram(w);
    if (*reduce) (*reduce)(counts);  // sharded: the histogram of the whole weight
    auto values = pattern_values(dtype, w.options());
    auto uidx = at::nonzero(counts.gt(0).logical_and(at::isfinite(values))).flatten();
    // The table is small: iterate it in fp64 (more accurate than the dense engine's fp32) unless
    // U x K is large (8-bit LUTs over many distinct values), then in fp32.
    const auto ct = uidx.numel() * options->n_clusters() <= (int64_t{1} << 22) ? at::kDouble : at::kFloat;
    auto v = values.index_select(0, uidx).to(ct).detach().requires_grad_(true);  // U
    auto nb = counts.index_select(0, uidx).to(ct);                               // U
    const int64_t U = v.numel();
    at::Tensor h;
    Iterations it;
    {
      at::AutoGradMode grad_mode(true);  // the small graph over the table, kept for backward
      it = run_iterations(v.view({1, U, 1}), centroids.detach().to(ct).clone(), *options, nb.view({1, U, 1}));
      h = at::bmm(it.attention, it.centroids).view({U});
    }
    auto result = kernels::ops::table_gather(w, full_table(h.detach(), uidx));
    if (options->table_index_list()) {
      // eDKM's layout: a 16-bit index per weight into the U distinct values, saved in place of the
      // weight (U <= 65,536 fits 16 bits: stored as int16 bit patterns, read back masked).
      auto compact = at::full({kTableSize}, -1, w.options().dtype(at::kInt));
      compact.index_copy_(0, uidx, at::arange(U, compact.options()));
      auto index = at::empty({w.numel()}, w.options().dtype(at::kShort));
      const auto flat = w.view({-1});
      for (int64_t b = 0; b < w.numel(); b += kIndexChunk) {  // chunks: ATen's temporaries stay small
        const int64_t n = std::min(kIndexChunk, w.numel() - b);
        const auto part = flat.narrow(0, b, n);
        const auto patterns =
            (dtype == DType::kF16 ? part : part.to(at::kBFloat16)).view(at::kShort).to(at::kInt) & 0xFFFF;
        index.narrow(0, b, n).copy_(compact.index_select(0, patterns));
      }
      ctx->save_for_backward({index});
      ctx->saved_data["shape"] = w.sizes().vec();
      ctx->saved_data["dtype"] = static_cast<int64_t>(w.scalar_type());
    } else {
      ctx->save_for_backward({w});
    }
    ctx->saved_data["v"] = v;
    ctx->saved_data["h"] = h;
    ctx->saved_data["nb"] = nb;
    ctx->saved_data["uidx"] = uidx;
    ctx->saved_data["c_in"] = it.attention_centroids.detach();
    ctx->saved_data["c_out"] = it.centroids.detach();
    ctx->saved_data["state"] = engine_state(*options, *reduce);
    out->centroids = it.centroids.detach().to(at::kFloat);  // DKMOutput's fp32, whatever the table's ct
    out->iterations = it.iterations;
    out->inertia = it.inertia.sum().item<double>();
    return result;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto w = ctx->get_saved_variables()[0];  // the weight, or its index list
    const auto v = ctx->saved_data["v"].toTensor(), uidx = ctx->saved_data["uidx"].toTensor();
    const auto& state = engine_state(ctx->saved_data["state"]);
    if (state.options.table_index_list()) return index_list_backward(ctx, w, grads[0]);
    const auto g = grads[0].to(w.scalar_type()).contiguous();
    auto sums = kernels::ops::table_scatter_add(w, g);
    state.sum(sums);  // sharded: G of the whole weight
    const auto G = sums.index_select(0, uidx).to(v.scalar_type());
    const auto [a, shift_u] = slope_shift(ctx, G);
    const auto dw = kernels::ops::table_backward(w, g, full_table(a, uidx), full_table(shift_u, uidx));
    return {dw, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }

 private:
  // a_b (slope) and (e_b - G_b a_b) / n_b (shift) of the U table entries from their gradient sums G.
  static std::pair<at::Tensor, at::Tensor> slope_shift(torch::autograd::AutogradContext* ctx, const at::Tensor& G) {
    const auto v = ctx->saved_data["v"].toTensor(), h = ctx->saved_data["h"].toTensor();
    const auto nb = ctx->saved_data["nb"].toTensor();
    const DKMOptions& options = engine_state(ctx->saved_data["state"]).options;
    at::Tensor e, a;
    at::AutoGradMode grad_mode(true);
    e = torch::autograd::grad({h}, {v}, {G}, /*retain_graph=*/true)[0];
    auto v2 = v.detach().requires_grad_(true);  // a_b: the direct path only, centroids held fixed
    const int64_t U = v2.numel();
    auto x = v2.view({1, U, 1});
    auto att = attention(x, ctx->saved_data["c_in"].toTensor(), options, sparsity_block(x, options));
    auto hd = at::bmm(att, ctx->saved_data["c_out"].toTensor()).view({U});
    a = torch::autograd::grad({hd}, {v2}, {at::ones_like(hd)})[0];
    return {a, (e - G * a) / nb};
  }

  // The backward through the explicit index list (table_index_list): the same formula, with the
  // weights' table entries read from the saved 16-bit indices (ATen ops; any device).
  static torch::autograd::variable_list index_list_backward(torch::autograd::AutogradContext* ctx,
                                                            const at::Tensor& index, const at::Tensor& grad) {
    const auto v = ctx->saved_data["v"].toTensor();
    const auto& state = engine_state(ctx->saved_data["state"]);
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const auto g = grad.contiguous().view({-1});
    const int64_t N = index.numel();
    // In chunks, so that ATen's temporaries (indices as int32, fp64 sums) stay small.
    auto idx_of = [&](int64_t b, int64_t n) { return index.narrow(0, b, n).to(at::kInt) & 0xFFFF; };
    auto sums = at::zeros({v.numel()}, g.options().dtype(at::kDouble));
    for (int64_t b = 0; b < N; b += kIndexChunk) {
      const int64_t n = std::min(kIndexChunk, N - b);
      sums.index_add_(0, idx_of(b, n), g.narrow(0, b, n).to(at::kDouble));
    }
    state.sum(sums);  // sharded: G of the whole weight (every rank has the same U entries)
    const auto [a, shift_u] = slope_shift(ctx, sums.to(v.scalar_type()));
    const auto slope = a.to(at::kFloat), shift = shift_u.to(at::kFloat);
    auto dw = at::empty({N}, g.options().dtype(dtype));
    for (int64_t b = 0; b < N; b += kIndexChunk) {
      const int64_t n = std::min(kIndexChunk, N - b);
      const auto i = idx_of(b, n);
      dw.narrow(0, b, n).copy_(g.narrow(0, b, n).to(at::kFloat) * slope.index_select(0, i) + shift.index_select(0, i));
    }
    return {dw.to(dtype).view(ctx->saved_data["shape"].toIntVector()), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

DKMOutput table_cluster(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                        const Reducer& reduce) {
  DKMOutput out;
  out.weight = TableFunction::apply(weight, centroids, &options, &out, &reduce);
  return out;
}

}  // namespace edkm::detail
