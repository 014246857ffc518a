// CUDA twin of kernels/cpu/stream_kernel.cpp: one pass of the streaming engine. One block per
// (group, chunk) work item; the block's partials live in shared memory (double atomics) and are
// written once per block. Per-vector scratch is sized by a KMAX template (16, 64 or 256) so that
// 1..4-bit LUTs keep their attention rows in registers.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/stream_math.h"

namespace edkm::kernels {
namespace {

constexpr int kThreads = 256;

struct SharedSink {
  double* acc;
  __device__ void add(int64_t slot, double v) { atomicAdd(&acc[slot], v); }
};

template <class S, int KMAX, int DIM>
__global__ void __launch_bounds__(kThreads) stream_kernel(StreamParams p) {
  extern __shared__ double acc[];
  const int64_t item = blockIdx.x;
  const int64_t g = item / p.chunks, c = item % p.chunks;
  if (!stream_group_active(p, g)) return;  // block-uniform
  const bool reduces = stream_pass_reduces(p.pass);
  if (reduces)
    for (int64_t s = threadIdx.x; s < p.width; s += blockDim.x) acc[s] = 0.0;
  __syncthreads();
  SharedSink sink{acc};
  const int64_t end = min(p.n, (c + 1) * p.chunk);
  for (int64_t i = c * p.chunk + threadIdx.x; i < end; i += blockDim.x) stream_vector<S, KMAX, DIM>(p, g, i, sink);
  __syncthreads();
  if (reduces)
    for (int64_t s = threadIdx.x; s < p.width; s += blockDim.x) p.partials[item * p.width + s] = acc[s];
}

template <class S, int KMAX, int DIM>
int launch(const StreamParams& p, cudaStream_t stream) {
  const int64_t items = p.groups * p.chunks;
  const size_t smem = stream_pass_reduces(p.pass) ? sizeof(double) * static_cast<size_t>(p.width) : 0;
  stream_kernel<S, KMAX, DIM><<<static_cast<unsigned>(items), kThreads, smem, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

template <class S, int DIM>
int launch_for_k(const StreamParams& p, cudaStream_t stream) {
  if (p.k <= 16) return launch<S, 16, DIM>(p, stream);
  if (p.k <= 64) return launch<S, 64, DIM>(p, stream);
  return launch<S, kStreamMaxK, DIM>(p, stream);
}

template <class S>
int launch_for_dim(const StreamParams& p, cudaStream_t stream) {
  return p.d == 1 ? launch_for_k<S, 1>(p, stream) : launch_for_k<S, 0>(p, stream);
}

}  // namespace

int stream_pass_cuda(const StreamParams& p, void* stream) {
  if (p.groups * p.chunks == 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  return p.kind == ValueKind::kF64 ? launch_for_dim<double>(p, s) : launch_for_dim<float>(p, s);
}

}  // namespace edkm::kernels
