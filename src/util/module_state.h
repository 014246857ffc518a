#pragma once
// Module::to and Module::load for modules with state buffers (step counters, flags, centroids
// whose dtype follows the weights).
//
// LibTorch's Module::to(dtype) converts every parameter and buffer, integer ones included (Python
// converts only floating-point ones): a step counter would become bf16, round above 256, and its
// saved file would no longer load. `to_keeping_state` converts the children with their own to(),
// moves every parameter and buffer to `device`, and changes the dtype of floating-point ones
// only.
//
// LibTorch's Module::load reads each tensor into the existing one with set_(), which refuses
// another dtype with a message that names neither the file nor the tensor (or, for a smaller
// dtype, a storage-bounds error): a state saved after to(bf16), or with fp64 centroids, would not
// load into a fresh module. `load_adopting_dtypes` reads every parameter and buffer with the
// file's dtype, on the device the module's tensor is on, and loads children with their own
// load() (so their checks run).
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <optional>

#include "edkm/export.h"

namespace torch::nn {
class Module;
}
namespace torch::serialize {
class InputArchive;
}

EDKM_INTERNAL_BEGIN
namespace edkm::detail {

void to_keeping_state(torch::nn::Module& module, std::optional<c10::Device> device,
                      std::optional<c10::ScalarType> dtype, bool non_blocking);

void load_adopting_dtypes(torch::nn::Module& module, torch::serialize::InputArchive& archive);

}  // namespace edkm::detail
EDKM_INTERNAL_END
