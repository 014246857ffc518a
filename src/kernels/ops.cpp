// The tensor-level kernel entries (kernels/ops.h): checks -> device guard -> current stream ->
// early return if empty -> device / dtype dispatch -> launch check. The only file that chooses
// between a kernel's CPU and CUDA twins.
#include "kernels/ops.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#if defined(EDKM_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#endif

namespace edkm::kernels::ops {
namespace {

constexpr const char* kNoCudaKernels =
    "this build of edkm has no CUDA kernels (configured with EDKM_CUDA=OFF or without nvcc)";

// The device an op runs on: its guard and current stream for the op's lifetime.
class DeviceScope {
 public:
  DeviceScope(const at::Tensor& on, const char* op) : cuda_(on.defined() && on.is_cuda()) {
    TORCH_CHECK(on.defined(), "edkm: ", op, ": the input is an undefined tensor");
    const std::string why = unsupported_device(on);
    TORCH_CHECK(why.empty(), "edkm: ", op, ": ", why);
#if defined(EDKM_WITH_CUDA)
    if (on.is_cuda()) {
      guard_.emplace(on.device());
      stream_ = at::cuda::getCurrentCUDAStream(on.device().index()).stream();
    }
#endif
  }
  bool cuda() const { return cuda_; }
  void* stream() const { return stream_; }  // nullptr is the legacy default stream

 private:
#if defined(EDKM_WITH_CUDA)
  std::optional<c10::cuda::CUDAGuard> guard_;
#endif
  bool cuda_;
  void* stream_ = nullptr;
};

#if defined(EDKM_WITH_CUDA)
void check_launch(int rc, const char* op) {
  TORCH_CHECK(rc == 0, "edkm: ", op, " CUDA kernel failed: ", cudaGetErrorString(static_cast<cudaError_t>(rc)));
}
// The one device branch: the CUDA twin on the scope's stream, else the CPU one. In a build without
// CUDA, DeviceScope has already refused CUDA tensors, and the CUDA call is not compiled.
#define EDKM_DISPATCH(scope, op, cpu_call, cuda_call) \
  do {                                                \
    if ((scope).cuda()) {                             \
      check_launch((cuda_call), op);                  \
    } else {                                          \
      cpu_call;                                       \
    }                                                 \
  } while (0)
#else
#define EDKM_DISPATCH(scope, op, cpu_call, cuda_call) \
  do {                                                \
    (void)(scope);                                    \
    cpu_call;                                         \
  } while (0)
#endif

// The table ops' weight (on a device DeviceScope accepted): contiguous bf16 / fp16 / fp32.
TableParams table_params(const at::Tensor& w, const char* op) {
  TORCH_CHECK(w.is_contiguous(), "edkm: ", op, ": weight must be contiguous");
  const auto st = w.scalar_type();
  TORCH_CHECK(st == at::kBFloat16 || st == at::kHalf || st == at::kFloat, "edkm: ", op,
              ": weight must be bfloat16, float16 or float32, got ", st);
  return TableParams{w.data_ptr(), w.numel(), kernel_dtype(st)};
}

// A table op's device scope and its weight's parameters (the device checked first).
struct TableScope : DeviceScope {
  TableScope(const at::Tensor& w, const char* op) : DeviceScope(w, op), p(table_params(w, op)) {}
  TableParams p;
};

void check_like(const at::Tensor& t, const char* name, const at::Tensor& w, const char* op) {
  TORCH_CHECK(t.defined() && t.is_contiguous() && t.numel() == w.numel() && t.scalar_type() == w.scalar_type() &&
                  t.device() == w.device(),
              "edkm: ", op, ": ", name, " must be contiguous ", w.scalar_type(), " with ", w.numel(), " elements on ",
              w.device());
}

void check_table(const at::Tensor& t, const char* name, const at::Tensor& w, const char* op) {
  TORCH_CHECK(t.defined() && t.is_contiguous() && t.numel() == kTableSize && t.scalar_type() == at::kFloat &&
                  t.device() == w.device(),
              "edkm: ", op, ": ", name, " must be ", kTableSize, " contiguous fp32 values on ", w.device());
}

}  // namespace

bool cuda_kernels_built() {
#if defined(EDKM_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

std::string unsupported_device(const at::Tensor& t) {
  if (!t.is_cpu() && !t.is_cuda()) return "it runs on CPU and CUDA tensors only, got " + t.device().str();
  if (t.is_cuda() && !cuda_kernels_built()) return kNoCudaKernels;
  return "";
}

at::Tensor table_histogram(const at::Tensor& w) {
  constexpr const char* op = "table histogram";
  TableScope scope(w, op);
  auto counts = at::empty({kTableSize}, w.options().dtype(at::kLong));
  if (w.numel() == 0) return counts.zero_();
  EDKM_DISPATCH(scope, op, table_histogram_cpu(scope.p, counts.data_ptr<int64_t>()),
                table_histogram_cuda(scope.p, counts.data_ptr<int64_t>(), scope.stream()));
  return counts;
}

at::Tensor table_gather(const at::Tensor& w, const at::Tensor& table) {
  constexpr const char* op = "table gather";
  TableScope scope(w, op);
  check_table(table, "table", w, op);
  auto out = at::empty_like(w);
  if (w.numel() == 0) return out;
  EDKM_DISPATCH(scope, op, table_gather_cpu(scope.p, table.data_ptr<float>(), out.data_ptr()),
                table_gather_cuda(scope.p, table.data_ptr<float>(), out.data_ptr(), scope.stream()));
  return out;
}

at::Tensor table_scatter_add(const at::Tensor& w, const at::Tensor& grad) {
  constexpr const char* op = "table scatter-add";
  TableScope scope(w, op);
  check_like(grad, "grad", w, op);
  auto sums = at::empty({kTableSize}, w.options().dtype(at::kDouble));
  if (w.numel() == 0) return sums.zero_();
  EDKM_DISPATCH(scope, op, table_scatter_add_cpu(scope.p, grad.data_ptr(), sums.data_ptr<double>()),
                table_scatter_add_cuda(scope.p, grad.data_ptr(), sums.data_ptr<double>(), scope.stream()));
  return sums;
}

at::Tensor table_backward(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& slope,
                          const at::Tensor& shift) {
  constexpr const char* op = "table backward";
  TableScope scope(w, op);
  check_like(grad, "grad", w, op);
  check_table(slope, "slope", w, op);
  check_table(shift, "shift", w, op);
  auto dw = at::empty_like(w);
  if (w.numel() == 0) return dw;
  EDKM_DISPATCH(
      scope, op,
      table_backward_cpu(scope.p, grad.data_ptr(), slope.data_ptr<float>(), shift.data_ptr<float>(), dw.data_ptr()),
      table_backward_cuda(scope.p, grad.data_ptr(), slope.data_ptr<float>(), shift.data_ptr<float>(), dw.data_ptr(),
                          scope.stream()));
  return dw;
}

void stream_pass(const StreamParams& p, const at::Tensor& on) {
  constexpr const char* op = "streaming pass";
  TORCH_CHECK(p.x != nullptr && p.k >= 1 && p.k <= kStreamMaxK && p.d >= 1 && p.d <= kStreamMaxDim, "edkm: ", op,
              ": needs x, 1..", kStreamMaxK, " centroids and cluster_dim 1..", kStreamMaxDim);
  DeviceScope scope(on, op);
  if (p.groups * p.chunks == 0) return;
  EDKM_DISPATCH(scope, op, stream_pass_cpu(p), stream_pass_cuda(p, scope.stream()));
}

namespace {
template <class S>
void assign_on(const AssignParams<S>& p, const at::Tensor& on) {
  constexpr const char* op = "assign";
  TORCH_CHECK(p.k >= 1 && p.k <= 256, "edkm: ", op, ": k must be in 1..256, got ", p.k);
  DeviceScope scope(on, op);
  if (p.n * p.groups == 0) return;
  EDKM_DISPATCH(scope, op, assign_cpu(p), assign_cuda(p, scope.stream()));
}
}  // namespace

void assign(const AssignParams<float>& p, const at::Tensor& on) { assign_on(p, on); }
void assign(const AssignParams<double>& p, const at::Tensor& on) { assign_on(p, on); }

void lut_gemv(const LutParams& p, const at::Tensor& x, const at::Tensor& y) {
  constexpr const char* op = "LUT GEMV";
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() == 2 && x.size(1) == p.in, "edkm: ", op,
              ": x must be contiguous fp32 rows of ", p.in);
  const int64_t m = x.size(0);
  TORCH_CHECK(m <= 4, "edkm: ", op, ": at most 4 rows of x, got ", m);
  TORCH_CHECK(y.scalar_type() == at::kFloat && y.is_contiguous() && y.numel() == m * p.out && y.device() == x.device(),
              "edkm: ", op, ": y must be ", m, " x ", p.out, " contiguous fp32 on ", x.device());
  DeviceScope scope(x, op);
  if (m == 0 || p.out == 0) return;
  EDKM_DISPATCH(scope, op, lut_gemv_cpu(p, x.data_ptr<float>(), m, y.data_ptr<float>()),
                lut_gemv_cuda(p, x.data_ptr<float>(), m, y.data_ptr<float>(), scope.stream()));
}

void lut_decode(const LutParams& p, int64_t r0, int64_t r1, const at::Tensor& out) {
  constexpr const char* op = "LUT decode";
  TORCH_CHECK(0 <= r0 && r0 <= r1 && r1 <= p.out, "edkm: ", op, ": rows [", r0, ", ", r1, ") outside 0..", p.out);
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.numel() == (r1 - r0) * p.in, "edkm: ", op,
              ": out must be ", r1 - r0, " x ", p.in, " contiguous fp32");
  DeviceScope scope(out, op);
  if (r1 == r0 || p.in == 0) return;
  EDKM_DISPATCH(scope, op, lut_decode_cpu(p, r0, r1, out.data_ptr<float>()),
                lut_decode_cuda(p, r0, r1, out.data_ptr<float>(), scope.stream()));
}

}  // namespace edkm::kernels::ops
