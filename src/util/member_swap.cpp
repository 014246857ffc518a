#include "util/member_swap.h"

#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace edkm::detail {
namespace {

struct Registry {
  std::mutex mutex;
  std::unordered_map<const c10::TensorImpl*, SwappableMember> members;
  std::unordered_map<const c10::TensorImpl*, std::string> owners;
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void register_member(const at::Tensor& parameter, std::shared_ptr<torch::nn::Module> module, at::Tensor* member,
                     const std::string& name, const std::string& owner_description) {
  TORCH_CHECK(parameter.defined() && member, "edkm: register_member: undefined parameter or member");
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const auto* key = parameter.unsafeGetTensorImpl();
  auto it = r.owners.find(key);
  TORCH_CHECK(it == r.owners.end(), "edkm: the weight of layer '", name, "' is already clustered by ", it->second,
              "; one Palettizer per model (destroy the other first)");
  r.members[key] = SwappableMember{std::move(module), member, parameter, name};
  r.owners[key] = owner_description;
}

void unregister_member(const at::Tensor& parameter) {
  if (!parameter.defined()) return;
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.members.erase(parameter.unsafeGetTensorImpl());
  r.owners.erase(parameter.unsafeGetTensorImpl());
}

BoundMembers bind_members(std::vector<at::Tensor>& params) {
  BoundMembers out;
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (r.members.empty()) return out;
  for (const auto& [key, m] : r.members) {
    const at::Tensor& now = *m.member;
    if (!now.defined() || now.is_same(m.parameter)) continue;  // not swapped now
    bool named = false;
    for (size_t i = 0; i < params.size(); ++i) {
      if (!params[i].defined()) continue;
      if (params[i].unsafeGetTensorImpl() == key) {
        params[i] = now;
      } else if (!params[i].is_same(now)) {
        continue;
      }
      out.listed.push_back(MemberBinding{i, m.module, m.member});
      named = true;
    }
    if (named) continue;
    // A frozen layer's clustered weight is kept for the recompute. One that needs a gradient is
    // an error if the recompute reads it: a one-element stand-in of its shape finds that out
    // without keeping every other layer's clustered weight alive (and on the device, past an
    // Offloader) in every checkpoint node until backward.
    const bool needs_grad = now.requires_grad();
    at::Tensor kept = needs_grad ? at::zeros({}, now.options()).expand(now.sizes()) : now;
    out.unlisted.push_back(UnlistedMember{m.module, m.member, std::move(kept), needs_grad, m.name});
  }
  // Bindings in param order (the registry's order is a hash map's).
  std::sort(out.listed.begin(), out.listed.end(),
            [](const MemberBinding& a, const MemberBinding& b) { return a.index < b.index; });
  return out;
}

void MemberOverride::set(const MemberBinding& b, at::Tensor value) {
  saved_.push_back(Saved{b.module, b.member, std::exchange(*b.member, std::move(value))});
}

MemberOverride::~MemberOverride() {
  for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) *it->member = std::move(it->previous);
}

}  // namespace edkm::detail
