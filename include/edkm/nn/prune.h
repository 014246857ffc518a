#pragma once
// Magnitude pruning of module parameters with masks: L1 unstructured and structured (whole
// slices along a dim by their L_n norm), apply / remove (make permanent), sparsity report.
//
// Unlike torch.nn.utils.prune, which keeps `weight_orig` and recomputes `weight = orig * mask`
// every forward, the mask is applied in place: the parameter itself holds the pruned values, a
// bool buffer keeps the mask (in a child module "prune_masks": state_dict key
// "prune_masks.<name>") and a gradient hook on the parameter multiplies its gradient by the mask (the same gradient
// PyTorch gives `weight_orig`), so plain optimisers keep pruned entries at zero. Memory: one byte per element for the
// mask instead of a second copy of the weight plus a masked product each forward; `remove` frees the mask too.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <string>
#include <vector>

#include "edkm/export.h"

namespace edkm {
namespace functional {

/// Bool mask of `weight`'s shape that is false at the round(amount * numel) entries of smallest
/// |weight| (ties broken by position). `amount` in [0, 1].
///
/// Example:
///   auto mask = edkm::functional::l1_unstructured_mask(w, 0.5);  // half the entries false
EDKM_API at::Tensor l1_unstructured_mask(const at::Tensor& weight, double amount);

/// Bool mask of `weight`'s shape that is false on the round(amount * size(dim)) slices along `dim`
/// whose L_n norm (over all other dims) is smallest. `amount` in [0, 1], `n` > 0 (inf allowed).
///
/// Example:
///   auto mask = edkm::functional::ln_structured_mask(w, 0.25, 2, 0);  // a quarter of the rows
EDKM_API at::Tensor ln_structured_mask(const at::Tensor& weight, double amount, double n, int64_t dim);

}  // namespace functional

namespace prune {

/// Prunes parameter `name` (a direct parameter of `module`, e.g. "weight") so that a fraction
/// `amount` of its entries with the smallest |value| is zero. Pruning again combines masks:
/// entries already pruned count first (so `amount` is the target sparsity of the tensor).
///
/// Example:
///   torch::nn::Linear fc(512, 512);
///   edkm::prune::l1_unstructured(*fc, "weight", 0.3);
///   // train...; then make it permanent:
///   edkm::prune::remove(*fc, "weight");
EDKM_API void l1_unstructured(torch::nn::Module& module, const std::string& name, double amount);

/// Prunes the slices of `name` along `dim` with the smallest L_n norm (e.g. dim 0 of a Linear
/// weight: output channels). Combines with an existing mask like l1_unstructured.
///
/// Example:
///   edkm::prune::ln_structured(*conv, "weight", 0.5, 2, 0);  // half the output channels
EDKM_API void ln_structured(torch::nn::Module& module, const std::string& name, double amount, double n, int64_t dim);

/// Applies `mask` (bool or 0/1 values, the parameter's shape), combined with an existing one.
EDKM_API void apply_mask(torch::nn::Module& module, const std::string& name, const at::Tensor& mask);

/// Makes the pruning of `name` permanent: the parameter keeps its zeros, the mask buffer and the
/// gradient hook go. (Remove before clone(): LibTorch's clone does not know the masks child.)
EDKM_API void remove(torch::nn::Module& module, const std::string& name);

/// Whether `name` has a mask.
EDKM_API bool is_pruned(const torch::nn::Module& module, const std::string& name);

/// The mask of `name` (undefined when not pruned).
EDKM_API at::Tensor mask(const torch::nn::Module& module, const std::string& name);

/// Multiplies every pruned parameter of `module` and its descendants by its mask again (e.g. after
/// loading a state dict or an optimiser step that moved pruned entries, such as weight decay with
/// a non-zero gradient elsewhere in the graph).
EDKM_API void reapply_masks(torch::nn::Module& module);

/// Zeros of one parameter.
struct EDKM_API SparsityEntry {
  std::string name;     ///< qualified parameter name, e.g. "0.weight"
  int64_t numel = 0;    ///< elements
  int64_t zeros = 0;    ///< elements equal to zero
  bool pruned = false;  ///< has a mask
  double sparsity() const { return numel ? static_cast<double>(zeros) / static_cast<double>(numel) : 0.0; }
};

/// Zeros of every parameter of a module, and in total.
struct EDKM_API SparsityReport {
  std::vector<SparsityEntry> entries;
  int64_t numel = 0;
  int64_t zeros = 0;
  double sparsity() const { return numel ? static_cast<double>(zeros) / static_cast<double>(numel) : 0.0; }
  /// A table: name, elements, zeros, sparsity %, pruned.
  std::string to_string() const;
};

/// Sparsity of every parameter of `module` (recursively).
///
/// Example:
///   std::cout << edkm::prune::sparsity_report(*model).to_string();
EDKM_API SparsityReport sparsity_report(const torch::nn::Module& module);

}  // namespace prune
}  // namespace edkm
