// Blocked sliding-window attention. Keys and values are padded by the window on each side and
// viewed as overlapping blocks with unfold (no copy until the batched matmul), so each block of
// queries meets exactly the keys its band can reach.
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/softmax.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <ostream>

#include "edkm/nn/local_attention.h"

namespace edkm {
namespace {

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* who) {
  TORCH_CHECK(q.defined() && k.defined() && v.defined(), "edkm: ", who, ": q, k and v must be defined");
  TORCH_CHECK(q.dim() == 4, "edkm: ", who, ": q must be [batch, heads, n, head_dim], got shape ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes(), "edkm: ", who, ": k must have q's shape ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(v.dim() == 4 && v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2), "edkm: ", who,
              ": v must be [batch, heads, n, v_dim] with q's batch, heads and n ", q.sizes().slice(0, 3), ", got ",
              v.sizes());
  TORCH_CHECK(q.is_floating_point() && k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "edkm: ", who, ": q, k, v must share one floating dtype, got ", q.scalar_type(), ", ", k.scalar_type(),
              ", ", v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), "edkm: ", who, ": q, k, v must be on one device");
}

double scale_of(const at::Tensor& q, std::optional<double> scale) {
  TORCH_CHECK(!scale || (*scale > 0 && std::isfinite(*scale)),
              "edkm: local attention: scale must be positive and finite, got ", *scale);
  return scale ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
}

}  // namespace

namespace functional {

at::Tensor band_mask(int64_t n, int64_t window, bool causal, at::Device device) {
  TORCH_CHECK(n >= 0, "edkm: band_mask: n must be non-negative, got ", n);
  TORCH_CHECK(window > 0, "edkm: band_mask: window must be positive, got ", window);
  const auto idx = at::arange(n, at::TensorOptions().dtype(at::kLong).device(device));
  const at::Tensor rel = idx.view({1, n}) - idx.view({n, 1});  // j - i
  return (rel >= -window) & (rel <= (causal ? 0 : window));
}

at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                            std::optional<double> scale) {
  check_qkv(q, k, v, "masked_attention");
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) * scale_of(q, scale);
  if (mask.defined()) scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(scores, -1), v);
}

at::Tensor local_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const LocalAttentionFuncOptions& options) {
  check_qkv(q, k, v, "local_attention");
  TORCH_CHECK(options.window() > 0, "edkm: local_attention: window must be positive, got ", options.window());
  TORCH_CHECK(options.block_size() >= 0, "edkm: local_attention: block_size must be >= 0 (0: the window), got ",
              options.block_size());
  const int64_t batch = q.size(0), heads = q.size(1), n = q.size(2), dv = v.size(3);
  if (n == 0) return at::matmul(q, k.transpose(-1, -2)).matmul(v);  // empty, with the right shape
  const int64_t w = std::min(options.window(), n - 1);              // a wider window reaches no more keys
  const int64_t bq = std::min(options.block_size() > 0 ? options.block_size() : std::max<int64_t>(w, 1), n);
  const int64_t nb = (n + bq - 1) / bq, npad = nb * bq;
  const int64_t left = w, right = options.causal() ? 0 : w, span = bq + left + right;

  // Queries [B, H, nb, bq, d], scaled once (n * d multiplies instead of n * span).
  const at::Tensor qb = at::constant_pad_nd(q * scale_of(q, options.scale()), {0, 0, 0, npad - n})
                            .view({batch, heads, nb, bq, q.size(3)});
  // Keys [B, H, nb, d, span] and values [B, H, nb, span, dv]: overlapping views of the padded ones.
  const at::Tensor kb = at::constant_pad_nd(k, {0, 0, left, npad - n + right}).unfold(2, span, bq);
  const at::Tensor vb = at::constant_pad_nd(v, {0, 0, left, npad - n + right}).unfold(2, span, bq).transpose(-1, -2);

  // Allowed (query r of block b, key column c): key j = b*bq - left + c, query i = b*bq + r.
  // Padded query rows (i >= n) attend everything, so their (discarded) softmax stays finite.
  const auto lopt = at::TensorOptions().dtype(at::kLong).device(q.device());
  const at::Tensor start = (at::arange(nb, lopt) * bq).view({nb, 1, 1});
  const at::Tensor r = at::arange(bq, lopt).view({1, bq, 1}), c = at::arange(span, lopt).view({1, 1, span});
  const at::Tensor i = start + r, j = start - left + c, rel = c - left - r;
  const at::Tensor allowed = ((rel >= -w) & (rel <= right) & (j >= 0) & (j < n)) | (i >= n);  // [nb, bq, span]

  at::Tensor scores = at::matmul(qb, kb);  // [B, H, nb, bq, span]
  scores.masked_fill_(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  at::Tensor out = at::matmul(at::softmax(scores, -1), vb).view({batch, heads, npad, dv});
  return npad == n ? out : out.narrow(2, 0, n).contiguous();
}

}  // namespace functional

void LocalSelfAttentionOptions::validate() const {
  TORCH_CHECK(embed_dim() > 0 && num_heads() > 0,
              "edkm: LocalSelfAttentionOptions: embed_dim and num_heads must be "
              "positive, got ",
              embed_dim(), " and ", num_heads());
  TORCH_CHECK(embed_dim() % num_heads() == 0, "edkm: LocalSelfAttentionOptions: embed_dim ", embed_dim(),
              " must be divisible by num_heads ", num_heads());
  TORCH_CHECK(window() > 0, "edkm: LocalSelfAttentionOptions: window must be positive, got ", window());
  TORCH_CHECK(block_size() >= 0, "edkm: LocalSelfAttentionOptions: block_size must be >= 0, got ", block_size());
}

LocalSelfAttentionImpl::LocalSelfAttentionImpl(LocalSelfAttentionOptions options_) : options(options_) { reset(); }

void LocalSelfAttentionImpl::reset() {
  options.validate();
  const int64_t e = options.embed_dim();
  in_proj = register_module("in_proj", torch::nn::Linear(torch::nn::LinearOptions(e, 3 * e).bias(options.bias())));
  out_proj = register_module("out_proj", torch::nn::Linear(torch::nn::LinearOptions(e, e).bias(options.bias())));
}

void LocalSelfAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "edkm::LocalSelfAttention(embed_dim=" << options.embed_dim() << ", num_heads=" << options.num_heads()
         << ", window=" << options.window() << ", causal=" << options.causal() << ")";
}

at::Tensor LocalSelfAttentionImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == options.embed_dim(), "edkm: LocalSelfAttention: input must be [batch, n, ",
              options.embed_dim(), "], got shape ", x.sizes());
  const int64_t batch = x.size(0), n = x.size(1), h = options.num_heads(), d = options.embed_dim() / h;
  const at::Tensor qkv = in_proj->forward(x).view({batch, n, 3, h, d}).permute({2, 0, 3, 1, 4});  // 3 x [B, H, n, d]
  const at::Tensor out = functional::local_attention(
      qkv[0], qkv[1], qkv[2],
      LocalAttentionFuncOptions(options.window()).causal(options.causal()).block_size(options.block_size()));
  return out_proj->forward(out.transpose(1, 2).reshape({batch, n, options.embed_dim()}));
}

}  // namespace edkm
