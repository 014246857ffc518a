// CUDA twin of kernels/cpu/assign_kernel.cpp: one thread per weight, the group's centroids in
// shared memory. No ATen here: raw pointers, a params struct and a stream.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/assign_math.h"

namespace edkm::kernels {
namespace {

template <class S>
__global__ void assign_kernel(AssignParams<S> p) {
  __shared__ S c[256];
  // A block never straddles groups; groups are walked grid-stride over gridDim.y (capped at
  // 65,535 by CUDA), so per-row LUTs of any number of rows launch.
  for (int64_t g = blockIdx.y; g < p.groups; g += gridDim.y) {
    __syncthreads();  // the previous group's centroids are no longer read
    for (int32_t j = threadIdx.x; j < p.k; j += blockDim.x) c[j] = p.centroids[g * p.k + j];
    __syncthreads();
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.n; i += int64_t(gridDim.x) * blockDim.x) {
      const int64_t at = g * p.n + i;
      p.index[at] = nearest_centroid(p, p.weight[at], c);
    }
  }
}

template <class S>
int launch(const AssignParams<S>& p, void* stream) {
  if (p.n == 0 || p.groups == 0) return 0;
  constexpr int kThreads = 256;
  const int64_t blocks_x = std::min<int64_t>((p.n + kThreads - 1) / kThreads, 4096);
  const int64_t blocks_y = std::min<int64_t>(p.groups, 65535);
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y));
  assign_kernel<S><<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int assign_cuda(const AssignParams<float>& p, void* stream) { return launch(p, stream); }
int assign_cuda(const AssignParams<double>& p, void* stream) { return launch(p, stream); }

}  // namespace edkm::kernels
