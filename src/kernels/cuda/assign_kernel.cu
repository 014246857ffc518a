// CUDA twin of kernels/cpu/assign_kernel.cpp: one thread per weight, the group's centroids in
// shared memory. No ATen here: raw pointers, a params struct and a stream.
#include <cuda_runtime.h>

#include "kernels/assign_math.h"

namespace edkm::kernels {
namespace {

__global__ void assign_kernel(AssignParams p) {
  __shared__ float c[256];
  // A block never straddles groups: blocks are laid out per group (blockIdx.y).
  const int64_t g = blockIdx.y;
  for (int32_t j = threadIdx.x; j < p.k; j += blockDim.x) c[j] = p.centroids[g * p.k + j];
  __syncthreads();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t at = g * p.n + i;
    p.index[at] = nearest_centroid(p.weight[at], c, p.k, p.prune_threshold);
  }
}

}  // namespace

int assign_cuda(const AssignParams& p, void* stream) {
  if (p.n == 0 || p.groups == 0) return 0;
  constexpr int kThreads = 256;
  const int64_t blocks_x = std::min<int64_t>((p.n + kThreads - 1) / kThreads, 4096);
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(p.groups));
  assign_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace edkm::kernels
