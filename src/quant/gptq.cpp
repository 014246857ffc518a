// GPTQ on one weight (see edkm/quant/gptq.h): the options, the Hessian accumulator, the uniform and LUT
// grids, the lazy-batch column loop, and the round-to-nearest baseline on the same uniform grid.
#include "edkm/quant/gptq.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "edkm/dkm/kmeans.h"
#include "quant/gptq_internal.h"

namespace edkm {

std::string to_string(QuantGrid g) { return g == QuantGrid::kUniform ? "uniform" : "lut"; }

void GPTQOptions::validate() const {
  TORCH_CHECK(bits() >= 1 && bits() <= 8, "GPTQOptions: bits must be in 1..8, got ", bits());
  TORCH_CHECK(group_size() >= 0, "GPTQOptions: group_size must be >= 0 (0: one group per row), got ", group_size());
  TORCH_CHECK(lut_rows() >= 0, "GPTQOptions: lut_rows must be >= 0 (0: one LUT per tensor), got ", lut_rows());
  // Relative to the mean of diag(H) (0.01 in GPTQ): past 1e3 the damping drowns the Hessian, and
  // near the double range it overflows it.
  TORCH_CHECK(std::isfinite(damp()) && damp() >= 0 && damp() <= 1e3,
              "GPTQOptions: damp (relative to the mean of diag(H)) must be in [0, 1000], got ", damp());
  TORCH_CHECK(block_size() >= 1, "GPTQOptions: block_size must be >= 1, got ", block_size());
  TORCH_CHECK(min_samples() >= -1, "GPTQOptions: min_samples must be -1 (in_features) or >= 0, got ", min_samples());
}

// --- Hessian ------------------------------------------------------------------------------------

GPTQHessian::GPTQHessian(int64_t in_features) : in_features_(in_features) {
  TORCH_CHECK(in_features >= 1, "GPTQHessian: in_features must be >= 1, got ", in_features);
}

void GPTQHessian::add(const at::Tensor& x) {
  TORCH_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == in_features_, "GPTQHessian::add: expected x [..., ",
              in_features_, "], got ", x.defined() ? x.sizes() : at::IntArrayRef{});
  TORCH_CHECK(x.is_floating_point(), "GPTQHessian::add: x must be floating point, got ", x.scalar_type());
  if (!sum_.defined()) sum_ = at::zeros({in_features_, in_features_}, x.options().dtype(at::kDouble));
  const at::Tensor x2 = x.detach().reshape({-1, in_features_}).to(sum_.device(), at::kDouble);
  sum_.addmm_(x2.t(), x2);
  samples_ += x2.size(0);
}

at::Tensor GPTQHessian::hessian() const {
  if (samples_ == 0) return at::zeros({in_features_, in_features_}, at::TensorOptions().dtype(at::kDouble));
  return sum_ * (2.0 / static_cast<double>(samples_));
}

// --- the uniform grid (shared by GPTQ and RTN) ----------------------------------------------------

namespace detail {

void uniform_params(const at::Tensor& x, int64_t maxq, at::Tensor& scale, at::Tensor& zero) {
  // The reference's Quantizer.find_params (asymmetric, per channel): the range always includes 0.
  at::Tensor xmin = std::get<0>(x.min(1)).clamp_max(0);
  at::Tensor xmax = std::get<0>(x.max(1)).clamp_min(0);
  const at::Tensor empty = xmin.eq(0).logical_and(xmax.eq(0));
  xmin = xmin.masked_fill(empty, -1);
  xmax = xmax.masked_fill(empty, 1);
  scale = (xmax - xmin) / static_cast<double>(maxq);
  zero = at::round(-xmin / scale);
}

void check_layer(int64_t rows, int64_t cols, int64_t samples, const GPTQOptions& options, const char* what) {
  TORCH_CHECK(samples >= 1, what, ": no calibration samples (the Hessian is empty)");
  const int64_t need = options.min_samples() < 0 ? cols : std::max<int64_t>(options.min_samples(), 1);
  TORCH_CHECK(samples >= need, what, ": calibration set too small: ", samples, " calibration vectors for ", cols,
              " input features (min_samples ", need,
              "); the Hessian would be rank-deficient. Add calibration data or lower GPTQOptions::min_samples");
  TORCH_CHECK(options.damp() > 0 || samples >= cols, what, ": calibration set too small: ", samples,
              " calibration vectors for ", cols, " input features with damp 0 leave the Hessian singular");
  if (options.grid() == QuantGrid::kLut) {
    TORCH_CHECK(options.lut_rows() == 0 || rows % options.lut_rows() == 0, what, ": lut_rows ", options.lut_rows(),
                " does not divide the ", rows, " output rows");
  }
}

}  // namespace detail

double uniform_bits_per_weight(int64_t rows, int64_t cols, int64_t bits, int64_t group_size) {
  TORCH_CHECK(rows >= 1 && cols >= 1 && bits >= 1 && bits <= 8 && group_size >= 0,
              "uniform_bits_per_weight: needs rows, cols >= 1, bits in 1..8 and group_size >= 0, got ", rows, ", ",
              cols, ", ", bits, ", ", group_size);
  const int64_t groups = group_size > 0 ? (cols + group_size - 1) / group_size : 1;
  return static_cast<double>(bits) + 32.0 * static_cast<double>(groups) / static_cast<double>(cols);
}

double lut_bits_per_weight(int64_t rows, int64_t cols, int64_t bits, int64_t lut_rows) {
  TORCH_CHECK(rows >= 1 && cols >= 1 && bits >= 1 && bits <= 8 && lut_rows >= 0,
              "lut_bits_per_weight: needs rows, cols >= 1, bits in 1..8 and lut_rows >= 0, got ", rows, ", ", cols,
              ", ", bits, ", ", lut_rows);
  return static_cast<double>(bits) +
         16.0 * static_cast<double>(int64_t{1} << bits) / static_cast<double>((lut_rows > 0 ? lut_rows : rows) * cols);
}

at::Tensor rtn_quantize(const at::Tensor& weight, int64_t bits, int64_t group_size) {
  TORCH_CHECK(weight.defined() && weight.dim() == 2, "rtn_quantize: weight must be 2-D (rows x cols)");
  TORCH_CHECK(weight.is_floating_point(), "rtn_quantize: weight must be floating point, got ", weight.scalar_type());
  TORCH_CHECK(bits >= 1 && bits <= 8, "rtn_quantize: bits must be in 1..8, got ", bits);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  TORCH_CHECK(group_size >= 0, "rtn_quantize: group_size must be >= 0, got ", group_size);
  const int64_t gs = group_size > 0 ? std::min(group_size, cols) : cols, maxq = (int64_t{1} << bits) - 1;
  const at::Tensor w = weight.detach().to(at::kCPU, at::kDouble);
  TORCH_CHECK(at::isfinite(w).all().item<bool>(), "rtn_quantize: weight has non-finite values");
  at::Tensor out = at::empty_like(w);
  for (int64_t c0 = 0; c0 < cols; c0 += gs) {  // the last group is narrower when gs does not divide cols
    const at::Tensor v = w.narrow(1, c0, std::min(gs, cols - c0));
    at::Tensor scale, zero;
    detail::uniform_params(v, maxq, scale, zero);
    scale = scale.unsqueeze(1);
    zero = zero.unsqueeze(1);
    const at::Tensor q = (at::round(v / scale) + zero).clamp(0, static_cast<double>(maxq));
    out.narrow(1, c0, v.size(1)).copy_(scale * (q - zero));
  }
  (void)rows;
  return out.to(weight.device(), weight.scalar_type());
}

// --- GPTQ ---------------------------------------------------------------------------------------

namespace {

// Sorted centroids of a sensitivity-weighted 1-D k-means of `values` (n) with `weights` (n).
std::vector<double> weighted_lut(const double* values, const double* weights, int64_t n, int64_t k) {
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return values[a] < values[b]; });
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += weights[i];
  const bool uniform = !(total > 0);  // every column dead: plain k-means
  std::vector<double> v, c;
  for (int64_t i : order) {
    const double wt = uniform ? 1.0 : weights[i];
    if (!(wt > 0)) continue;
    if (!v.empty() && v.back() == values[i]) {
      c.back() += wt;
    } else {
      v.push_back(values[i]);
      c.push_back(wt);
    }
  }
  // Exact DP up to 1024 distinct values, else the binned approximation refined by Lloyd.
  auto centers = kmeans::binned_1d(v.data(), c.data(), static_cast<int64_t>(v.size()), k, 1024, 100);
  std::sort(centers.begin(), centers.end());
  return centers;
}

// Index of the nearest of `k` ascending centroids (the lower one on a tie).
inline int64_t nearest_index(const double* c, int64_t k, double w) {
  int64_t lo = 0, hi = k - 1;  // first index whose upper midpoint is >= w
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (w <= 0.5 * (c[mid] + c[mid + 1])) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

at::Tensor upper_cholesky_of_inverse(at::Tensor h) {
  auto [l, info] = at::linalg_cholesky_ex(h);
  TORCH_CHECK(info.item<int64_t>() == 0,
              "gptq_quantize: the damped Hessian is not positive definite; raise damp or add calibration data");
  const at::Tensor hinv = at::cholesky_inverse(l);
  auto [u, info2] = at::linalg_cholesky_ex(hinv, /*upper=*/true);
  TORCH_CHECK(info2.item<int64_t>() == 0,
              "gptq_quantize: the inverse Hessian is not positive definite (numerically); raise damp");
  return u.contiguous();  // LAPACK leaves it column-major
}

}  // namespace

GPTQResult gptq_quantize(const at::Tensor& weight, const GPTQHessian& hessian, const GPTQOptions& options) {
  options.validate();
  TORCH_CHECK(weight.defined() && weight.dim() == 2, "gptq_quantize: weight must be 2-D (rows x cols), got ",
              weight.defined() ? weight.sizes() : at::IntArrayRef{});
  TORCH_CHECK(weight.is_floating_point(), "gptq_quantize: weight must be floating point, got ", weight.scalar_type());
  const int64_t rows = weight.size(0), cols = weight.size(1);
  TORCH_CHECK(rows >= 1 && cols >= 1, "gptq_quantize: weight is empty (", rows, " x ", cols, ")");
  TORCH_CHECK(hessian.in_features() == cols, "gptq_quantize: Hessian size mismatch: the Hessian is of ",
              hessian.in_features(), " input features, the weight has ", cols, " columns");
  detail::check_layer(rows, cols, hessian.samples(), options, "gptq_quantize");
  const at::Tensor w0 = weight.detach().to(at::kCPU, at::kDouble).contiguous();
  TORCH_CHECK(at::isfinite(w0).all().item<bool>(), "gptq_quantize: weight has non-finite values");
  const at::Tensor h0 = hessian.hessian().to(at::kCPU);
  TORCH_CHECK(at::isfinite(h0).all().item<bool>(), "gptq_quantize: the Hessian has non-finite values");

  const int64_t maxq = options.levels() - 1, k = options.levels();
  const bool uniform = options.grid() == QuantGrid::kUniform;
  // Groups of gs columns; the last one narrower when gs does not divide cols (576 columns at g128).
  const int64_t gs = options.group_size() > 0 ? std::min(options.group_size(), cols) : cols;
  const int64_t groups = (cols + gs - 1) / gs;

  // Dead columns (never active): H_ii = 1, W[:, i] = 0.
  at::Tensor h = h0.clone();
  at::Tensor w = w0.clone();
  const at::Tensor dead = h.diagonal().eq(0);
  // Every column dead: the layer's calibration inputs are all zero (or so small that x x^T
  // underflowed); GPTQ would return a zero weight with error 0.
  TORCH_CHECK(!dead.all().item<bool>(), "gptq_quantize: all ", cols,
              " input features are zero in the calibration data (the Hessian is 0): there is nothing to weigh "
              "the error by; check what the layer's inputs were");
  h.diagonal().masked_fill_(dead, 1.0);
  w.masked_fill_(dead.unsqueeze(0), 0.0);

  // Grid parameters fixed up front: scale/zero per static group (act_order, or group_size 0), LUTs.
  GPTQResult r;
  at::Tensor scales, zeros;
  const bool static_groups = uniform && (options.act_order() || options.group_size() == 0);
  if (uniform) {
    scales = at::zeros({rows, groups}, w.options());
    zeros = at::zeros({rows, groups}, w.options());
    if (static_groups) {
      for (int64_t g = 0; g < groups; ++g) {
        at::Tensor s, z;
        detail::uniform_params(w.narrow(1, g * gs, std::min(gs, cols - g * gs)), maxq, s, z);
        scales.select(1, g).copy_(s);
        zeros.select(1, g).copy_(z);
      }
    }
  } else {
    const int64_t lr = options.lut_rows() > 0 ? options.lut_rows() : rows, lut_groups = rows / lr;
    r.luts = at::empty({lut_groups, k}, w.options());
    const at::Tensor sens = h0.diagonal().contiguous().repeat({lr});  // SqueezeLLM: weighted by diag(H)
    // The groups' LUTs on the threads (each its own sort and k-means; the same LUTs as one by one).
    const double* wv = w.data_ptr<double>();  // contiguous rows: group g's values are rows [g lr, (g + 1) lr)
    double* lp = r.luts.data_ptr<double>();
    at::parallel_for(0, lut_groups, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const auto c = weighted_lut(wv + g * lr * cols, sens.data_ptr<double>(), lr * cols, k);
        std::copy(c.begin(), c.end(), lp + g * k);
      }
    });
  }

  at::Tensor perm;
  if (options.act_order()) {
    perm = std::get<1>(at::sort(h.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
    w = w.index_select(1, perm);
    h = h.index_select(0, perm).index_select(1, perm);
  }
  h.diagonal().add_(options.damp() * h.diagonal().mean().item<double>());
  const at::Tensor u = upper_cholesky_of_inverse(h);  // cols x cols, upper
  const double* up = u.data_ptr<double>();

  // Columns are rows of wt (cols x rows) so that each column is contiguous.
  at::Tensor wt = w.t().contiguous();
  at::Tensor qt = at::empty_like(wt);
  at::Tensor codes_t = at::empty({cols, rows}, at::TensorOptions().dtype(at::kByte));
  double* wp = wt.data_ptr<double>();
  double* qp = qt.data_ptr<double>();
  uint8_t* cp = codes_t.data_ptr<uint8_t>();
  const int64_t* pp = perm.defined() ? perm.data_ptr<int64_t>() : nullptr;
  const double* sp = uniform ? scales.data_ptr<double>() : nullptr;  // rows x groups
  const double* zp = uniform ? zeros.data_ptr<double>() : nullptr;
  const double* lut = uniform ? nullptr : r.luts.data_ptr<double>();
  const int64_t lut_rows = options.lut_rows() > 0 ? options.lut_rows() : rows;

  for (int64_t i1 = 0; i1 < cols; i1 += options.block_size()) {
    const int64_t i2 = std::min(i1 + options.block_size(), cols), count = i2 - i1;
    at::Tensor err = at::zeros({count, rows}, wt.options());  // (w - q) / U_jj of the block's columns
    double* ep = err.data_ptr<double>();
    for (int64_t i = i1; i < i2; ++i) {
      const int64_t col = pp ? pp[i] : i;
      const int64_t g = col / gs;
      if (uniform && !static_groups && i % gs == 0) {
        // The group's weights as error feedback has left them now: inside the block as they are,
        // after the block with the block's pending update applied.
        const int64_t ge = std::min(i + gs, cols);  // the group's end
        at::Tensor cur = wt.narrow(0, i, std::min(ge, i2) - i);
        if (ge > i2) {
          const at::Tensor pending =
              at::mm(u.narrow(0, i1, i - i1).narrow(1, i2, ge - i2).t(), err.narrow(0, 0, i - i1));
          cur = at::cat({cur, wt.narrow(0, i2, ge - i2) - pending}, 0);
        }
        at::Tensor s, z;
        detail::uniform_params(cur.t(), maxq, s, z);
        scales.select(1, g).copy_(s);
        zeros.select(1, g).copy_(z);
      }
      const double d = up[i * cols + i];
      double* wi = wp + i * rows;
      double* qi = qp + i * rows;
      uint8_t* ci = cp + i * rows;
      double* ei = ep + (i - i1) * rows;
      // Every row is quantized on its own (GPTQ's updates run along a row), so the rows are split
      // over the threads: the same arithmetic per element as one thread, so the same result.
      at::parallel_for(0, rows, 256, [&](int64_t ra, int64_t rb) {
        for (int64_t r0 = ra; r0 < rb; ++r0) {
          double q;
          if (uniform) {
            const double s = sp[r0 * groups + g], z = zp[r0 * groups + g];
            const double level = std::min(std::max(std::nearbyint(wi[r0] / s) + z, 0.0), static_cast<double>(maxq));
            q = s * (level - z);
            ci[r0] = static_cast<uint8_t>(level);
          } else {
            const double* c = lut + (r0 / lut_rows) * k;
            const int64_t idx = nearest_index(c, k, wi[r0]);
            q = c[idx];
            ci[r0] = static_cast<uint8_t>(idx);
          }
          qi[r0] = q;
          ei[r0] = (wi[r0] - q) / d;
        }
        // Error feedback inside the block.
        for (int64_t j = i + 1; j < i2; ++j) {
          const double f = up[i * cols + j];
          double* wj = wp + j * rows;
          for (int64_t r0 = ra; r0 < rb; ++r0) wj[r0] -= ei[r0] * f;
        }
      });
    }
    // The block's update of every later column at once.
    if (i2 < cols) {
      wt.narrow(0, i2, cols - i2).addmm_(u.narrow(0, i1, count).narrow(1, i2, cols - i2).t(), err, 1.0, -1.0);
    }
  }

  at::Tensor q = qt.t();
  at::Tensor codes = codes_t.t();
  if (perm.defined()) {
    const at::Tensor inv = at::argsort(perm);
    q = q.index_select(1, inv);
    codes = codes.index_select(1, inv);
  }
  q = q.contiguous();
  const at::Tensor diff = w0 - q;
  r.error = (at::mm(diff, h0) * diff).sum().item<double>();
  r.weight = q.to(weight.device(), weight.scalar_type());
  r.codes = codes.contiguous();
  if (uniform) {
    r.scales = scales;
    r.zeros = zeros;
    r.bits_per_weight = uniform_bits_per_weight(rows, cols, options.bits(), options.group_size());
  } else {
    r.bits_per_weight = lut_bits_per_weight(rows, cols, options.bits(), options.lut_rows());
  }
  return r;
}

}  // namespace edkm
