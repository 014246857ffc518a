#include "edkm/nn/palettized_linear.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>

#include "io/safetensors_core.h"
#include "kernels/ops.h"

namespace edkm {
namespace {

kernels::LutParams params_of(const PackedWeight& w, const at::Tensor& bias) {
  kernels::LutParams p;
  p.packed = w.packed.data_ptr<uint8_t>();
  p.lut = w.lut.data_ptr<float>();
  p.scale = w.scale.defined() ? w.scale.data_ptr<float>() : nullptr;
  p.bias = bias.defined() ? bias.data_ptr<float>() : nullptr;
  p.out = w.out_features;
  p.in = w.in_features;
  p.bits = static_cast<int32_t>(w.bits);
  p.rows_per_lut = w.rows_per_lut;
  p.lut_stride = w.lut.size(1);
  return p;
}

void check_packed(const PackedWeight& w) {
  TORCH_CHECK(w.lut.defined() && w.packed.defined(), "edkm: PackedWeight is empty");
  TORCH_CHECK(w.bits >= 1 && w.bits <= 8, "edkm: PackedWeight bits must be in 1..8, got ", w.bits);
  TORCH_CHECK(w.rows_per_lut >= 1 && w.out_features % w.rows_per_lut == 0, "edkm: PackedWeight rows_per_lut ",
              w.rows_per_lut, " does not divide the ", w.out_features, " rows");
  TORCH_CHECK(w.lut.dim() == 2 && w.lut.size(0) == w.out_features / w.rows_per_lut &&
                  w.lut.size(1) == (int64_t{1} << w.bits) && w.lut.scalar_type() == at::kFloat && w.lut.is_contiguous(),
              "edkm: PackedWeight LUT must be ", w.out_features / w.rows_per_lut, " x ", int64_t{1} << w.bits,
              " contiguous fp32, got ", w.lut.sizes(), " ", w.lut.scalar_type());
  const auto need = static_cast<int64_t>(
      io::packed_bytes(static_cast<uint64_t>(w.out_features * w.in_features), static_cast<int>(w.bits)) +
      kernels::kLutPadBytes);
  TORCH_CHECK(w.packed.scalar_type() == at::kByte && w.packed.dim() == 1 && w.packed.numel() == need &&
                  w.packed.is_contiguous(),
              "edkm: PackedWeight indices must be ", need, " contiguous bytes (the stream plus 16 zero bytes), got ",
              w.packed.numel());
  TORCH_CHECK(!w.scale.defined() ||
                  (w.scale.numel() == w.out_features && w.scale.scalar_type() == at::kFloat && w.scale.is_contiguous()),
              "edkm: PackedWeight scale must hold ", w.out_features, " fp32 values");
  TORCH_CHECK(w.packed.device() == w.lut.device() && (!w.scale.defined() || w.scale.device() == w.lut.device()),
              "edkm: PackedWeight tensors on different devices");
}

// Rows [r0, r1) of W (with the scale) into out ((r1 - r0) x in fp32, contiguous, on w's device).
void decode_into(const PackedWeight& w, int64_t r0, int64_t r1, const at::Tensor& out) {
  kernels::ops::lut_decode(params_of(w, {}), r0, r1, out);
}

}  // namespace

PackedWeight PackedWeight::from_palette(const Palette& palette) {
  TORCH_CHECK(palette.lut.defined() && palette.indices.defined(), "edkm: PackedWeight::from_palette: empty Palette");
  TORCH_CHECK(palette.shape.size() == 2, "edkm: PackedWeight needs a 2-D weight (out x in), got shape ",
              c10::IntArrayRef(palette.shape));
  TORCH_CHECK(palette.cluster_dim == 1, "edkm: PackedWeight supports cluster_dim 1 only, got ", palette.cluster_dim);
  TORCH_CHECK(palette.bits >= 1 && palette.bits <= 8, "edkm: PackedWeight bits must be in 1..8, got ", palette.bits);
  TORCH_CHECK(palette.shape[0] > 0 && palette.shape[1] > 0, "edkm: PackedWeight: an empty weight (shape ",
              c10::IntArrayRef(palette.shape), ") has nothing to pack");
  PackedWeight w;
  w.out_features = palette.shape[0];
  w.in_features = palette.shape[1];
  w.bits = palette.bits;
  const int64_t K = int64_t{1} << palette.bits;
  const int64_t groups = palette.lut.size(0);
  TORCH_CHECK(palette.lut.dim() == 3 && palette.lut.size(1) == K && palette.lut.size(2) == 1,
              "edkm: PackedWeight: the LUT must be G x ", K, " x 1, got ", palette.lut.sizes());
  TORCH_CHECK(groups >= 1 && w.out_features % groups == 0, "edkm: PackedWeight: ", groups, " LUTs do not split the ",
              w.out_features, " rows evenly");
  w.rows_per_lut = w.out_features / groups;
  TORCH_CHECK(palette.granularity == Granularity::kPerGroupedChannel || groups == 1,
              "edkm: PackedWeight: per-tensor palette with ", groups, " LUTs");
  const at::Tensor idx = palette.indices.to(at::kCPU).contiguous();
  TORCH_CHECK(idx.scalar_type() == at::kByte && idx.numel() == w.out_features * w.in_features,
              "edkm: PackedWeight: ", idx.numel(), " uint8 indices for a ", w.out_features, " x ", w.in_features,
              " weight");
  if (idx.numel() > 0)
    TORCH_CHECK(idx.max().item<int64_t>() < K, "edkm: PackedWeight: an index is out of range of the ", K, "-entry LUT");
  const uint64_t bytes = io::packed_bytes(static_cast<uint64_t>(idx.numel()), static_cast<int>(w.bits));
  w.packed = at::zeros({static_cast<int64_t>(bytes + kernels::kLutPadBytes)}, at::kByte);
  io::pack_indices(idx.data_ptr<uint8_t>(), static_cast<uint64_t>(idx.numel()), static_cast<int>(w.bits),
                   w.packed.data_ptr<uint8_t>());
  const auto device = palette.lut.device();
  w.packed = w.packed.to(device);
  w.lut = palette.lut.reshape({groups, K}).to(at::kFloat).contiguous();
  if (palette.scale.defined()) w.scale = palette.scale.reshape({-1}).to(device, at::kFloat).contiguous();
  check_packed(w);
  return w;
}

PackedWeight PackedWeight::random(int64_t out_features, int64_t in_features, int64_t bits, int64_t rows_per_lut,
                                  c10::Device device, double stddev) {
  TORCH_CHECK(out_features > 0 && in_features > 0, "edkm: PackedWeight::random: shape ", out_features, " x ",
              in_features, " must be positive");
  TORCH_CHECK(bits >= 1 && bits <= 8, "edkm: PackedWeight::random: bits must be in 1..8, got ", bits);
  if (rows_per_lut == 0) rows_per_lut = out_features;
  TORCH_CHECK(rows_per_lut > 0 && out_features % rows_per_lut == 0, "edkm: PackedWeight::random: rows_per_lut ",
              rows_per_lut, " does not divide the ", out_features, " rows");
  TORCH_CHECK(stddev > 0 && std::isfinite(stddev), "edkm: PackedWeight::random: stddev must be finite and > 0, got ",
              stddev);
  PackedWeight w;
  w.out_features = out_features;
  w.in_features = in_features;
  w.bits = bits;
  w.rows_per_lut = rows_per_lut;
  const auto bytes =
      static_cast<int64_t>(io::packed_bytes(static_cast<uint64_t>(out_features * in_features), static_cast<int>(bits)));
  // Any byte stream is valid indices at any width; the bits past the last index and the pad stay 0.
  w.packed = at::zeros({bytes + kernels::kLutPadBytes}, at::TensorOptions().dtype(at::kByte).device(device));
  w.packed.narrow(0, 0, bytes).random_(0, 256);
  const int64_t tail = out_features * in_features * bits % 8;
  if (tail) w.packed[bytes - 1].bitwise_and_((1 << tail) - 1);
  w.lut = at::randn({out_features / rows_per_lut, int64_t{1} << bits}, at::TensorOptions().device(device)) * stddev;
  check_packed(w);
  return w;
}

at::Tensor PackedWeight::decompress_rows(int64_t begin, int64_t end) const {
  check_packed(*this);
  TORCH_CHECK(0 <= begin && begin <= end && end <= out_features, "edkm: PackedWeight rows [", begin, ", ", end,
              ") outside 0..", out_features);
  at::Tensor out = at::empty({end - begin, in_features}, lut.options());
  decode_into(*this, begin, end, out);
  return out;
}

at::Tensor PackedWeight::decompress() const { return decompress_rows(0, out_features); }

int64_t PackedWeight::resident_bytes() const {
  return packed.nbytes() + lut.nbytes() + (scale.defined() ? scale.nbytes() : 0);
}

PackedWeight PackedWeight::to(c10::Device device) const {
  PackedWeight w = *this;
  w.lut = lut.to(device);
  w.packed = packed.to(device);
  if (scale.defined()) w.scale = scale.to(device);
  return w;
}

PackedWeight PackedWeight::concat_rows(const std::vector<PackedWeight>& parts) {
  TORCH_CHECK(!parts.empty(), "edkm: PackedWeight::concat_rows: no parts");
  PackedWeight out;
  const PackedWeight& first = parts.front();
  out.in_features = first.in_features;
  out.bits = first.bits;
  out.rows_per_lut = first.rows_per_lut;
  std::vector<at::Tensor> luts, scales;
  for (const auto& w : parts) {
    check_packed(w);
    TORCH_CHECK(w.in_features == first.in_features && w.bits == first.bits && w.rows_per_lut == first.rows_per_lut &&
                    w.scale.defined() == first.scale.defined(),
                "edkm: PackedWeight::concat_rows: parts differ in input features, bits, rows per LUT or scale (",
                w.in_features, "/", w.bits, "/", w.rows_per_lut, " vs ", first.in_features, "/", first.bits, "/",
                first.rows_per_lut, ")");
    out.out_features += w.out_features;
    luts.push_back(w.lut.cpu());
    if (w.scale.defined()) scales.push_back(w.scale.cpu());
  }
  // The index streams one after the other: byte copies where every part's stream ends on a byte
  // (rows x in x bits a multiple of 8, as for any in that is a multiple of 8), else re-packed.
  const uint64_t total = static_cast<uint64_t>(out.out_features * out.in_features);
  const uint64_t bytes = io::packed_bytes(total, static_cast<int>(out.bits));
  out.packed = at::zeros({static_cast<int64_t>(bytes) + kernels::kLutPadBytes}, at::kByte);
  uint8_t* dst = out.packed.data_ptr<uint8_t>();
  const bool on_bytes = std::all_of(parts.begin(), parts.end(), [](const PackedWeight& w) {
    return w.out_features * w.in_features * w.bits % 8 == 0;
  });
  if (on_bytes) {
    uint64_t at = 0;
    for (const auto& w : parts) {
      const at::Tensor packed = w.packed.cpu();
      const uint64_t n = static_cast<uint64_t>(w.out_features * w.in_features * w.bits / 8);
      std::memcpy(dst + at, packed.data_ptr<uint8_t>(), n);
      at += n;
    }
  } else {
    std::vector<uint8_t> idx(total);
    uint64_t at = 0;
    for (const auto& w : parts) {
      const at::Tensor packed = w.packed.cpu();
      const uint8_t* src = packed.data_ptr<uint8_t>();
      const uint64_t n = static_cast<uint64_t>(w.out_features * w.in_features);
      for (uint64_t i = 0; i < n; ++i)
        idx[at + i] = static_cast<uint8_t>(
            kernels::lut_index_at(src, i * static_cast<uint64_t>(w.bits), static_cast<int32_t>(w.bits)));
      at += n;
    }
    io::pack_indices(idx.data(), total, static_cast<int>(out.bits), dst);
  }
  const auto device = first.lut.device();
  out.packed = out.packed.to(device);
  out.lut = at::cat(luts, 0).to(device).contiguous();
  if (!scales.empty()) out.scale = at::cat(scales, 0).to(device).contiguous();
  check_packed(out);
  return out;
}

namespace functional {

std::string lut_kernel_isa() {
  switch (kernels::lut_isa()) {
    case kernels::LutIsa::kAvx512Vbmi:
      return "avx512vbmi";
    case kernels::LutIsa::kAvx512:
      return "avx512";
    case kernels::LutIsa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

int64_t cpu_gemv_max_rows(int64_t bits) { return bits <= 4 ? 32 : 24; }

namespace {

// fn(r0, r1, rows) for blocks of rows of W decoded to fp32 (about 4 MiB each on the CPU, where they
// stay in the caches; 64 MiB on a GPU, where each block costs launches; one buffer reused).
template <class Fn>
void for_each_decoded_block(const PackedWeight& w, const at::TensorOptions& options, Fn&& fn) {
  const int64_t floats = options.device().is_cuda() ? int64_t{1} << 24 : int64_t{1} << 20;
  const int64_t block = std::min(w.out_features, std::max<int64_t>(16, floats / std::max<int64_t>(1, w.in_features)));
  at::Tensor tile = at::empty({block, w.in_features}, options);
  for (int64_t r0 = 0; r0 < w.out_features; r0 += block) {
    const int64_t r1 = std::min(w.out_features, r0 + block);
    at::Tensor t = tile.narrow(0, 0, r1 - r0);
    decode_into(w, r0, r1, t);
    fn(r0, r1, t);
  }
}

// y = xs W^T (+ b): xs [m, in] and y [m, out] contiguous fp32, b [out] contiguous fp32 or
// undefined; checked inputs, no autograd.
void lut_linear_into(const at::Tensor& xs, const PackedWeight& w, const at::Tensor& b, const at::Tensor& y) {
  const int64_t m = xs.size(0);
  if (m == 0 || w.out_features == 0) {
    y.zero_();
  } else if (m <= kGemvMaxRows) {
    kernels::ops::lut_gemv(params_of(w, b), xs, y);
  } else if (m <= (xs.is_cuda() ? kCudaGemvMaxRows : cpu_gemv_max_rows(w.bits))) {
    // A few rows more (a short prompt): the GEMV 4 rows of x at a time, each pass reading the packed
    // weight once, beats decoding every weight to fp32 for a matmul (cpu_gemv_max_rows,
    // kCudaGemvMaxRows).
    const kernels::LutParams p = params_of(w, b);
    for (int64_t r = 0; r < m; r += kGemvMaxRows) {
      const int64_t n = std::min(kGemvMaxRows, m - r);
      kernels::ops::lut_gemv(p, xs.narrow(0, r, n), y.narrow(0, r, n));
    }
  } else {
    // LUT-GEMM: blocks of rows decoded to fp32 (about 4 MiB each), multiplied by LibTorch's matmul.
    for_each_decoded_block(w, xs.options(), [&](int64_t r0, int64_t r1, const at::Tensor& t) {
      y.narrow(1, r0, r1 - r0).copy_(at::mm(xs, t.t()));
    });
    if (b.defined()) y.add_(b);
  }
}

// y = x W^T (+ b), checked inputs, no autograd.
at::Tensor lut_linear_impl(const at::Tensor& x, const PackedWeight& w, const at::Tensor& bias) {
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = w.out_features;
  const int64_t m = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  const at::Tensor xs = x.reshape({m, w.in_features}).to(at::kFloat).contiguous();
  // Every path reads the bias as [out] (a [out, 1] bias would broadcast over rows in add_).
  const at::Tensor b = bias.defined() ? bias.reshape({-1}).to(at::kFloat).contiguous() : bias;
  const at::Tensor y = at::empty({m, w.out_features}, xs.options());
  lut_linear_into(xs, w, b, y);
  return y.reshape(out_shape).to(x.scalar_type());
}

// dx = dy W, W decoded a block of rows at a time ([m, out] fp32 -> [m, in] fp32).
at::Tensor lut_linear_input_grad(const at::Tensor& dy, const PackedWeight& w) {
  at::Tensor dx = at::zeros({dy.size(0), w.in_features}, dy.options());
  if (dy.size(0) == 0) return dx;
  for_each_decoded_block(w, dy.options(),
                         [&](int64_t r0, int64_t r1, const at::Tensor& t) { dx.addmm_(dy.narrow(1, r0, r1 - r0), t); });
  return dx;
}

// What backward needs: the packed weight (tensor handles, no copy) and the inputs' shapes and dtypes.
struct LutLinearSaved : torch::CustomClassHolder {
  PackedWeight w;
  std::vector<int64_t> x_shape, bias_shape;
  at::ScalarType x_dtype = at::kFloat, bias_dtype = at::kFloat;
};

// The packed weight is fixed (a LUT and indices have no gradient); x and the bias get theirs, so a
// PalettizedLinear trains adapters or distils through a packed base at every batch size.
struct LutLinearFunction : public torch::autograd::Function<LutLinearFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& bias,
                            const PackedWeight& w) {
    auto saved = c10::make_intrusive<LutLinearSaved>();
    saved->w = w;
    saved->x_shape = x.sizes().vec();
    saved->x_dtype = x.scalar_type();
    if (bias.defined()) {
      saved->bias_shape = bias.sizes().vec();
      saved->bias_dtype = bias.scalar_type();
    }
    ctx->saved_data["saved"] = c10::IValue::make_capsule(std::move(saved));
    return lut_linear_impl(x, w, bias);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = c10::static_intrusive_pointer_cast<LutLinearSaved>(ctx->saved_data["saved"].toCapsule());
    const at::Tensor dy = grads[0].reshape({-1, s->w.out_features}).to(at::kFloat).contiguous();
    torch::autograd::variable_list out(3);
    if (ctx->needs_input_grad(0)) out[0] = lut_linear_input_grad(dy, s->w).reshape(s->x_shape).to(s->x_dtype);
    if (ctx->needs_input_grad(1)) out[1] = dy.sum(0).reshape(s->bias_shape).to(s->bias_dtype);
    return out;
  }
};

}  // namespace

at::Tensor lut_linear(const at::Tensor& x, const PackedWeight& w, const at::Tensor& bias) {
  check_packed(w);
  TORCH_CHECK(x.defined() && x.dim() >= 1 && x.size(-1) == w.in_features, "edkm: lut_linear: input ",
              x.defined() ? x.sizes() : c10::IntArrayRef{}, " does not end in the weight's ", w.in_features,
              " input features");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "edkm: lut_linear: input must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(x.device() == w.lut.device(), "edkm: lut_linear: input on ", x.device(), ", weight on ", w.lut.device());
  TORCH_CHECK(!bias.defined() || (bias.numel() == w.out_features && bias.device() == x.device() &&
                                  at::isFloatingType(bias.scalar_type())),
              "edkm: lut_linear: bias must hold ", w.out_features, " floating-point values on ", x.device());
  const bool grad = at::GradMode::is_enabled() && (x.requires_grad() || (bias.defined() && bias.requires_grad()));
  if (!grad) return lut_linear_impl(x, w, bias);
  return LutLinearFunction::apply(x, bias, w);
}

void lut_linear_out(const at::Tensor& out, const at::Tensor& x, const PackedWeight& w, const at::Tensor& bias) {
  check_packed(w);
  TORCH_CHECK(
      x.defined() && x.dim() == 2 && x.size(1) == w.in_features && x.scalar_type() == at::kFloat && x.is_contiguous(),
      "edkm: lut_linear_out: input must be [rows, ", w.in_features, "] contiguous fp32, got ",
      x.defined() ? x.sizes() : c10::IntArrayRef{}, " ", x.defined() ? x.scalar_type() : at::kFloat,
      x.defined() && !x.is_contiguous() ? " (not contiguous)" : "");
  TORCH_CHECK(out.defined() && out.dim() == 2 && out.size(0) == x.size(0) && out.size(1) == w.out_features &&
                  out.scalar_type() == at::kFloat && out.is_contiguous(),
              "edkm: lut_linear_out: out must be [", x.size(0), ", ", w.out_features, "] contiguous fp32, got ",
              out.defined() ? out.sizes() : c10::IntArrayRef{},
              out.defined() && !out.is_contiguous() ? " (not contiguous)" : "");
  TORCH_CHECK(x.device() == w.lut.device() && out.device() == w.lut.device(), "edkm: lut_linear_out: input on ",
              x.device(), ", out on ", out.device(), ", weight on ", w.lut.device());
  TORCH_CHECK(!bias.defined() || (bias.numel() == w.out_features && bias.device() == x.device() &&
                                  bias.scalar_type() == at::kFloat && bias.is_contiguous()),
              "edkm: lut_linear_out: bias must hold ", w.out_features, " contiguous fp32 values on ", x.device());
  TORCH_CHECK(!at::GradMode::is_enabled() ||
                  !(x.requires_grad() || out.requires_grad() || (bias.defined() && bias.requires_grad())),
              "edkm: lut_linear_out records no gradient: call lut_linear, or run it under at::NoGradGuard");
  at::assert_no_overlap(out, x);
  lut_linear_into(x, w, bias.defined() ? bias.reshape({-1}) : bias, out);
}

at::Tensor lut_embedding(const at::Tensor& ids, const PackedWeight& w) {
  check_packed(w);
  TORCH_CHECK(ids.defined() && (ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt),
              "edkm: lut_embedding: ids must be int64 or int32");
  const at::Tensor flat = ids.reshape({-1}).to(at::kCPU, at::kLong).contiguous();
  if (flat.numel() > 0) {
    const int64_t lo = flat.min().item<int64_t>(), hi = flat.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < w.out_features, "edkm: lut_embedding: token id ", lo < 0 ? lo : hi,
                " outside the table's 0..", w.out_features - 1);
  }
  std::vector<int64_t> out_shape(ids.sizes().begin(), ids.sizes().end());
  out_shape.push_back(w.in_features);
  at::Tensor out = at::empty({flat.numel(), w.in_features}, w.lut.options());
  const int64_t* id = flat.data_ptr<int64_t>();
  // One row per token: CPU threads take tokens 16 at a time; on a GPU the calling thread launches
  // them all (in order on its current stream, which other threads would not see).
  const int64_t grain = out.is_cpu() ? 16 : std::max<int64_t>(1, flat.numel());
  at::parallel_for(0, flat.numel(), grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) decode_into(w, id[i], id[i] + 1, out[i]);
  });
  return out.reshape(out_shape);
}

}  // namespace functional

// --- modules ---------------------------------------------------------------------------------------

PalettizedLinearImpl::PalettizedLinearImpl(const Palette& palette, const at::Tensor& bias_)
    : PalettizedLinearImpl(PackedWeight::from_palette(palette), bias_) {}

PalettizedLinearImpl::PalettizedLinearImpl(PackedWeight weight, const at::Tensor& bias_)
    : packed(std::move(weight)), bias(bias_) {
  check_packed(packed);
  TORCH_CHECK(!bias.defined() || bias.numel() == packed.out_features, "edkm: PalettizedLinear: bias of ", bias.numel(),
              " values for ", packed.out_features, " output features");
  if (bias.defined()) bias = bias.detach().reshape({-1}).to(packed.lut.device(), at::kFloat).contiguous();
  reset();
}

void PalettizedLinearImpl::reset() {
  packed.lut = register_buffer("lut", packed.lut);
  packed.packed = register_buffer("packed", packed.packed);
  if (packed.scale.defined()) packed.scale = register_buffer("scale", packed.scale);
  if (bias.defined()) bias = register_buffer("bias", bias);
}

void PalettizedLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "edkm::PalettizedLinear(in_features=" << packed.in_features << ", out_features=" << packed.out_features
         << ", bits=" << packed.bits << ", rows_per_lut=" << packed.rows_per_lut << ", bias=" << bias.defined() << ")";
}

at::Tensor PalettizedLinearImpl::forward(const at::Tensor& x) { return functional::lut_linear(x, packed, bias); }

PalettizedEmbeddingImpl::PalettizedEmbeddingImpl(const Palette& palette)
    : PalettizedEmbeddingImpl(PackedWeight::from_palette(palette)) {}

PalettizedEmbeddingImpl::PalettizedEmbeddingImpl(PackedWeight weight) : packed(std::move(weight)) {
  check_packed(packed);
  reset();
}

void PalettizedEmbeddingImpl::reset() {
  packed.lut = register_buffer("lut", packed.lut);
  packed.packed = register_buffer("packed", packed.packed);
  if (packed.scale.defined()) packed.scale = register_buffer("scale", packed.scale);
}

void PalettizedEmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "edkm::PalettizedEmbedding(num_embeddings=" << packed.out_features
         << ", embedding_dim=" << packed.in_features << ", bits=" << packed.bits << ")";
}

at::Tensor PalettizedEmbeddingImpl::forward(const at::Tensor& ids) { return functional::lut_embedding(ids, packed); }

at::Tensor PalettizedEmbeddingImpl::linear(const at::Tensor& x) const { return functional::lut_linear(x, packed); }

}  // namespace edkm
