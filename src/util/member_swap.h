#pragma once
// Module members that read a computed tensor in place of their registered Parameter.
//
// LibTorch's Linear / Embedding / Conv forward read their `weight` *member*; the optimizer holds
// the registered *Parameter*. A Palettizer scope points the member at DKM(parameter) and back.
// Anything that re-runs a forward later (activation checkpointing's recompute in backward) must
// read the tensor the forward read, whatever the member holds by then (the scope may have ended
// and restored the Parameter). This registry is the one mechanism for that:
//   - the Palettizer registers each clustered layer's member with its Parameter (and refuses a
//     Parameter registered twice: two Palettizers on one model);
//   - `bind_members` (used by edkm::functional::checkpoint at forward time) replaces each listed
//     Parameter whose member currently holds another tensor by that tensor, and returns where,
//     and also every other member that holds another tensor (the recompute reads it again too);
//   - `MemberOverride` (used by the recompute) points those members at given tensors for the
//     duration of a call and puts back what they held.
// Gradients then flow recompute -> the tensor the forward read -> (its graph, e.g. DKM) -> the
// Parameter, exactly as without checkpointing, whether backward runs inside the scope or after.
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>
#include "edkm/export.h"

namespace torch::nn {
class Module;
}

EDKM_INTERNAL_BEGIN
namespace edkm::detail {

/// One registered member: `member` lives in `module` (kept alive), `parameter` is its Parameter.
struct SwappableMember {
  std::shared_ptr<torch::nn::Module> module;
  at::Tensor* member = nullptr;
  at::Tensor parameter;
  std::string name;  ///< for error messages (the layer's path)
};

/// Registers `member` of `module` as the reader of `parameter`. Throws c10::Error naming `name`
/// when the Parameter is registered already (e.g. by another Palettizer).
void register_member(const at::Tensor& parameter, std::shared_ptr<torch::nn::Module> module, at::Tensor* member,
                     const std::string& name, const std::string& owner_description);
/// Removes the registration of `parameter` (no-op when absent).
void unregister_member(const at::Tensor& parameter);

/// A member bound at forward time: params[index] was replaced by what `member` held.
struct MemberBinding {
  size_t index = 0;
  std::shared_ptr<torch::nn::Module> module;
  at::Tensor* member = nullptr;
};

/// A member that holds another tensor than its Parameter now, and that no param names.
struct UnlistedMember {
  std::shared_ptr<torch::nn::Module> module;
  at::Tensor* member = nullptr;
  at::Tensor value;  ///< what the member holds now; a zero stand-in of its shape when needs_grad
  bool needs_grad = false;
  std::string name;
};

/// What a checkpoint binds at forward time.
struct BoundMembers {
  std::vector<MemberBinding> listed;     ///< params naming a member (by its Parameter or what it holds)
  std::vector<UnlistedMember> unlisted;  ///< every other member that holds another tensor now
};

/// For each registered member that holds another tensor than its Parameter now (inside a
/// Palettizer scope): a param that is its Parameter is replaced by that tensor, a param that is
/// that tensor already is kept, and either way the binding is returned in `listed`; a member no
/// param names goes to `unlisted` with the tensor it holds (a frozen clustered layer, or a
/// Parameter the caller left out). Other params are left as they are.
BoundMembers bind_members(std::vector<at::Tensor>& params);

/// RAII: points each member at a tensor; restores what the members held when destroyed.
class MemberOverride {
 public:
  MemberOverride() = default;
  void set(const MemberBinding& b, at::Tensor value);
  ~MemberOverride();
  MemberOverride(const MemberOverride&) = delete;
  MemberOverride& operator=(const MemberOverride&) = delete;

 private:
  struct Saved {
    std::shared_ptr<torch::nn::Module> module;
    at::Tensor* member;
    at::Tensor previous;
  };
  std::vector<Saved> saved_;
};

}  // namespace edkm::detail
EDKM_INTERNAL_END
