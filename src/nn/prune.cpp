// Magnitude pruning: masks computed from |w| or slice norms, applied in place, kept as bool
// buffers of a child module, enforced on gradients by a hook on the parameter.
#include <ATen/TensorOperators.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>

#include <cmath>
#include <iomanip>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "edkm/nn/prune.h"

namespace edkm {
namespace {

void check_amount(double amount, const char* who) {
  TORCH_CHECK(amount >= 0.0 && amount <= 1.0, "edkm: ", who, ": amount must be in [0, 1], got ", amount);
}

int64_t count_of(double amount, int64_t total) { return static_cast<int64_t>(std::llround(amount * total)); }

// The smallest `k` entries of a 1-D importance vector, as a bool keep-mask.
at::Tensor keep_all_but_smallest(const at::Tensor& importance, int64_t k) {
  at::Tensor keep = at::ones(importance.sizes(), importance.options().dtype(at::kBool));
  if (k > 0) keep.index_fill_(0, std::get<1>(at::topk(importance, k, 0, /*largest=*/false, /*sorted=*/false)), false);
  return keep;
}

// Masks live as buffers of a child module "prune_masks" (buffer name = parameter name): LibTorch
// cannot unregister a buffer, but it can unregister a child, so `remove` rebuilds the child
// without the mask. Masks follow the module in state_dict and in to(device).
constexpr const char* kMasks = "prune_masks";

struct PruneMasks : torch::nn::Module {
  PruneMasks() : torch::nn::Module("edkm::PruneMasks") {}
};

std::shared_ptr<torch::nn::Module> masks_of(const torch::nn::Module& m) {
  const auto children = m.named_children();
  const auto* c = children.find(kMasks);
  return c ? *c : nullptr;
}

// One gradient hook per pruned parameter, found again by `remove`.
struct HookEntry {
  c10::weak_intrusive_ptr<c10::TensorImpl> param;
  unsigned hook = 0;
};
std::mutex g_hooks_mu;
std::unordered_map<const c10::TensorImpl*, HookEntry> g_hooks;

bool has_live_hook(const at::Tensor& p) {
  std::lock_guard<std::mutex> lock(g_hooks_mu);
  auto it = g_hooks.find(p.unsafeGetTensorImpl());
  if (it == g_hooks.end()) return false;
  if (it->second.param.lock().get() == p.unsafeGetTensorImpl()) return true;
  g_hooks.erase(it);  // a dead tensor's entry at a reused address
  return false;
}

// By value: named_parameters() returns a temporary dict; the tensor shares the parameter's impl.
at::Tensor find_param(torch::nn::Module& module, const std::string& name, const char* who) {
  const auto params = module.named_parameters(/*recurse=*/false);
  const at::Tensor* p = params.find(name);
  TORCH_CHECK(p != nullptr, "edkm: ", who, ": module ", module.name(), " has no parameter '", name,
              "' (give a direct parameter of the module, e.g. \"weight\")");
  return *p;
}

}  // namespace

namespace functional {

at::Tensor l1_unstructured_mask(const at::Tensor& weight, double amount) {
  TORCH_CHECK(weight.defined(), "edkm: l1_unstructured_mask: weight is undefined");
  check_amount(amount, "l1_unstructured_mask");
  at::NoGradGuard no_grad;
  const at::Tensor flat = weight.detach().reshape({-1}).abs();
  return keep_all_but_smallest(flat, count_of(amount, flat.numel())).view(weight.sizes());
}

at::Tensor ln_structured_mask(const at::Tensor& weight, double amount, double n, int64_t dim) {
  TORCH_CHECK(weight.defined(), "edkm: ln_structured_mask: weight is undefined");
  check_amount(amount, "ln_structured_mask");
  TORCH_CHECK(weight.dim() >= 1, "edkm: ln_structured_mask: weight must have at least one dim");
  TORCH_CHECK(n > 0, "edkm: ln_structured_mask: norm order n must be positive (inf allowed), got ", n);
  TORCH_CHECK(dim >= -weight.dim() && dim < weight.dim(), "edkm: ln_structured_mask: dim ", dim,
              " out of range for a weight of ", weight.dim(), " dims");
  if (dim < 0) dim += weight.dim();
  at::NoGradGuard no_grad;
  std::vector<int64_t> others;
  for (int64_t d = 0; d < weight.dim(); ++d)
    if (d != dim) others.push_back(d);
  const at::Tensor w = weight.detach().to(at::kFloat);
  const at::Tensor norms = others.empty() ? w.abs() : at::linalg_vector_norm(w, n, others);
  at::Tensor keep = keep_all_but_smallest(norms, count_of(amount, weight.size(dim)));
  std::vector<int64_t> shape(weight.dim(), 1);
  shape[dim] = weight.size(dim);
  return keep.view(shape).expand(weight.sizes()).contiguous();
}

}  // namespace functional

namespace prune {

void apply_mask(torch::nn::Module& module, const std::string& name, const at::Tensor& new_mask) {
  at::Tensor param = find_param(module, name, "prune::apply_mask");
  TORCH_CHECK(new_mask.defined() && new_mask.sizes() == param.sizes(), "edkm: prune::apply_mask: mask of shape ",
              new_mask.defined() ? new_mask.sizes() : at::IntArrayRef{}, " does not match parameter '", name,
              "' of shape ", param.sizes());
  at::NoGradGuard no_grad;
  // A mask of 0 / 1 (any dtype) or bools: a fractional value (a soft mask) would be read as keep.
  TORCH_CHECK(new_mask.scalar_type() == at::kBool || new_mask.eq(0).logical_or(new_mask.eq(1)).all().item<bool>(),
              "edkm: prune::apply_mask: the mask for '", name, "' must hold only 0 and 1 (or bools)");
  at::Tensor keep = new_mask.to(param.device()).to(at::kBool);
  auto masks = masks_of(module);
  if (!masks) masks = module.register_module(kMasks, std::make_shared<PruneMasks>());
  at::Tensor m = mask(module, name);  // shares the buffer: later set_data is seen by the hook
  if (m.defined()) {
    m.set_data(keep.logical_and(m.to(at::kBool)));
  } else {
    m = masks->register_buffer(name, keep);
  }
  param.mul_(m);
  if (!has_live_hook(param) && param.requires_grad()) {
    const unsigned id = param.register_hook([m](const at::Tensor& grad) { return grad * m; });
    std::lock_guard<std::mutex> lock(g_hooks_mu);
    g_hooks.insert_or_assign(param.unsafeGetTensorImpl(),
                             HookEntry{c10::weak_intrusive_ptr<c10::TensorImpl>(param.getIntrusivePtr()), id});
  }
}

void l1_unstructured(torch::nn::Module& module, const std::string& name, double amount) {
  check_amount(amount, "prune::l1_unstructured");
  at::Tensor param = find_param(module, name, "prune::l1_unstructured");
  at::NoGradGuard no_grad;
  at::Tensor importance = param.detach().abs().reshape({-1});
  if (at::Tensor old = mask(module, name); old.defined())  // already pruned entries go first
    importance = at::where(old.to(at::kBool).reshape({-1}), importance, -1.0);
  apply_mask(module, name, keep_all_but_smallest(importance, count_of(amount, importance.numel())).view(param.sizes()));
}

void ln_structured(torch::nn::Module& module, const std::string& name, double amount, double n, int64_t dim) {
  check_amount(amount, "prune::ln_structured");
  at::Tensor param = find_param(module, name, "prune::ln_structured");
  // pruned entries are zero in place, so already pruned slices have the smallest norms
  apply_mask(module, name, functional::ln_structured_mask(param, amount, n, dim));
}

void remove(torch::nn::Module& module, const std::string& name) {
  at::Tensor param = find_param(module, name, "prune::remove");
  TORCH_CHECK(is_pruned(module, name), "edkm: prune::remove: parameter '", name, "' is not pruned");
  {
    std::lock_guard<std::mutex> lock(g_hooks_mu);
    auto it = g_hooks.find(param.unsafeGetTensorImpl());
    if (it != g_hooks.end()) {
      if (it->second.param.lock().get() == param.unsafeGetTensorImpl()) param.remove_hook(it->second.hook);
      g_hooks.erase(it);
    }
  }
  // rebuild the masks child without this mask
  auto old = masks_of(module);
  module.unregister_module(kMasks);
  auto rest = std::make_shared<PruneMasks>();
  for (const auto& item : old->named_buffers(/*recurse=*/false))
    if (item.key() != name) rest->register_buffer(item.key(), item.value());
  if (!rest->named_buffers(/*recurse=*/false).is_empty()) module.register_module(kMasks, rest);
}

bool is_pruned(const torch::nn::Module& module, const std::string& name) { return mask(module, name).defined(); }

at::Tensor mask(const torch::nn::Module& module, const std::string& name) {
  const auto masks = masks_of(module);
  if (!masks) return at::Tensor();
  const auto buffers = masks->named_buffers(/*recurse=*/false);
  const at::Tensor* m = buffers.find(name);
  return m ? *m : at::Tensor();
}

void reapply_masks(torch::nn::Module& module) {
  at::NoGradGuard no_grad;
  for (const auto& item : module.named_parameters(/*recurse=*/false)) {
    at::Tensor m = mask(module, item.key());
    if (m.defined()) item.value().mul_(m.to(at::kBool));
  }
  for (const auto& child : module.children()) reapply_masks(*child);
}

std::string SparsityReport::to_string() const {
  std::ostringstream s;
  s << std::left << std::setw(32) << "parameter" << std::right << std::setw(12) << "elements" << std::setw(12)
    << "zeros" << std::setw(10) << "sparsity"
    << "  pruned\n";
  auto row = [&](const std::string& name, int64_t numel, int64_t zeros, double sp, const std::string& pruned) {
    s << std::left << std::setw(32) << name << std::right << std::setw(12) << numel << std::setw(12) << zeros
      << std::setw(9) << std::fixed << std::setprecision(2) << 100.0 * sp << "%  " << pruned << "\n";
  };
  for (const auto& e : entries) row(e.name, e.numel, e.zeros, e.sparsity(), e.pruned ? "yes" : "no");
  row("total", numel, zeros, sparsity(), "");
  return s.str();
}

SparsityReport sparsity_report(const torch::nn::Module& module) {
  at::NoGradGuard no_grad;
  SparsityReport r;
  const auto buffers = module.named_buffers(/*recurse=*/true);
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    SparsityEntry e;
    e.name = item.key();
    e.numel = item.value().numel();
    e.zeros = e.numel - item.value().count_nonzero().item<int64_t>();
    const auto dot = item.key().rfind('.');
    const std::string prefix = dot == std::string::npos ? "" : item.key().substr(0, dot + 1);
    e.pruned = buffers.contains(prefix + kMasks + "." + item.key().substr(dot == std::string::npos ? 0 : dot + 1));
    r.numel += e.numel;
    r.zeros += e.zeros;
    r.entries.push_back(std::move(e));
  }
  return r;
}

}  // namespace prune
}  // namespace edkm
