// Host entry of the hard assignment: argument checks -> device guard -> stream -> dispatch.
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "dkm/internal.h"
#include "kernels/assign_math.h"
#if defined(EDKM_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#endif

namespace edkm::functional {

at::Tensor assign(const at::Tensor& weight, const at::Tensor& centroids, const DKMOptions& options,
                  const at::Tensor& scale) {
  const auto l = ClusterLayout::of(weight, options);
  detail::check_centroids(centroids, weight, l, options);
  detail::check_scale(scale, weight, l, options);
  if (l.cluster_dim > 1) {  // vectors: chunked nearest search with the prune bias on centroid 0
    auto x = to_vectors(weight.detach().to(at::kDouble), l, scale.defined() ? scale.to(at::kDouble) : scale);
    auto c = centroids.detach().to(at::kDouble);
    auto out = at::empty({l.groups, l.vectors}, weight.options().dtype(at::kByte));
    for (int64_t g = 0; g < l.groups; ++g) {
      auto cg = c[g];
      auto d = detail::distances(x[g].unsqueeze(0), cg.unsqueeze(0), options)[0];
      out[g].copy_(d.argmin(1));
    }
    return out;
  }
  auto x = to_vectors(weight.detach().to(at::kFloat), l, scale.defined() ? scale.to(at::kFloat) : scale).contiguous();
  auto c = centroids.detach().to(at::kFloat).contiguous();
  auto out = at::empty({l.groups, l.vectors}, weight.options().dtype(at::kByte));
  kernels::AssignParams p;
  p.weight = x.data_ptr<float>();
  p.centroids = c.data_ptr<float>();
  p.index = out.data_ptr<uint8_t>();
  p.n = l.vectors;
  p.groups = l.groups;
  p.k = static_cast<int32_t>(options.n_clusters());
  p.prune_threshold = static_cast<float>(options.prune_threshold());
  if (weight.is_cuda()) {
#if defined(EDKM_WITH_CUDA)
    c10::cuda::CUDAGuard guard(weight.device());
    const int rc = kernels::assign_cuda(p, at::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(rc == 0, "edkm: assign CUDA kernel failed: ", cudaGetErrorString(static_cast<cudaError_t>(rc)));
#else
    TORCH_CHECK(false, "edkm: this build of edkm has no CUDA kernels (configured with EDKM_CUDA=OFF or without nvcc)");
#endif
  } else {
    TORCH_CHECK(weight.is_cpu(), "edkm: assign supports CPU and CUDA tensors, got ", weight.device());
    kernels::assign_cpu(p);
  }
  return out;
}

}  // namespace edkm::functional
