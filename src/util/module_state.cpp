#include "util/module_state.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/serialize/input-archive.h>

namespace edkm::detail {

void to_keeping_state(torch::nn::Module& module, std::optional<c10::Device> device,
                      std::optional<c10::ScalarType> dtype, bool non_blocking) {
  for (auto& child : module.children()) {
    if (device && dtype) {
      child->to(*device, *dtype, non_blocking);
    } else if (dtype) {
      child->to(*dtype, non_blocking);
    } else if (device) {
      child->to(*device, non_blocking);
    }
  }
  auto convert = [&](at::Tensor& t) {
    if (!t.defined()) return;
    const auto to_dtype = dtype && at::isFloatingType(t.scalar_type()) ? *dtype : t.scalar_type();
    const auto to_device = device ? *device : t.device();
    if (to_dtype == t.scalar_type() && to_device == t.device()) return;
    t.set_data(t.to(to_device, to_dtype, non_blocking));
  };
  for (auto& p : module.named_parameters(/*recurse=*/false)) convert(p.value());
  for (auto& b : module.named_buffers(/*recurse=*/false)) convert(b.value());
}

void load_adopting_dtypes(torch::nn::Module& module, torch::serialize::InputArchive& archive) {
  at::NoGradGuard no_grad;
  auto read = [&](const std::string& key, at::Tensor& into, bool is_buffer) {
    if (!into.defined()) return;  // as Module::save wrote it: nothing
    at::Tensor t;
    archive.read(key, t, is_buffer);  // throws, naming the key, when the file lacks it
    into.set_data(t.to(into.device()));
  };
  for (auto& p : module.named_parameters(/*recurse=*/false)) read(p.key(), p.value(), false);
  for (auto& b : module.named_buffers(/*recurse=*/false)) read(b.key(), b.value(), true);
  for (auto& child : module.named_children()) {
    torch::serialize::InputArchive child_archive;
    archive.read(child.key(), child_archive);
    child.value()->load(child_archive);
  }
}

}  // namespace edkm::detail
