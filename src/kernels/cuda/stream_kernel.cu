// CUDA twin of kernels/cpu/stream_kernel.cpp: one pass of the streaming engine. One block per
// (group, chunk) work item. Partials: each warp sums a slot over its 32 lanes with shuffles and
// lane 0 adds the sum once. When 8 warps' copies fit in 48 KiB of shared memory (width <= 768:
// every LUT up to 8 bits for cluster_dim 1, up to 5 bits for cluster_dim 16) it adds to the
// warp's own copy (no atomics, no two warps on one slot) and the copies are summed once per block;
// wider partials have one shared copy, which the 8 warps' lane 0 add to with fp64 atomics (8
// adders per slot, not 256). Per-vector scratch is sized by a KMAX template (16, 64 or 256) so
// that 1..4-bit LUTs keep their attention rows in registers.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/stream_math.h"

namespace edkm::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kWarpSinkMaxWidth = 768;  // kWarps * 768 doubles = 48 KiB

// Passes that do not reduce: stream_vector never adds.
struct NoSink {
  __device__ void add(int64_t, double) {}
};

// The warp's sum of a slot: every lane of the warp calls add() with the same slot
// (stream_vector's loops are uniform across lanes; lanes past the end add zeros); lane 0 adds it
// to the warp's own copy (SHARED false) or to the block's one copy with an atomic (SHARED true).
template <bool SHARED>
struct WarpSink {
  double* acc;
  bool live;
  __device__ void add(int64_t slot, double v) {
    v = live ? v : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) != 0) return;
    if (SHARED)
      atomicAdd(&acc[slot], v);
    else
      acc[slot] += v;
  }
};

// Whole warps iterate together over [begin, end): a lane past the end recomputes the last vector
// and adds 0.
template <class S, int KMAX, int DIM, class Sink>
__device__ void warp_uniform_vectors(const StreamParams& p, int64_t g, int64_t begin, int64_t end, Sink sink) {
  for (int64_t i0 = begin; i0 < end; i0 += blockDim.x) {
    const int64_t i = i0 + threadIdx.x;
    sink.live = i < end;
    stream_vector<S, KMAX, DIM>(p, g, sink.live ? i : end - 1, sink, sink.live);
  }
}

template <class S, int KMAX, int DIM>
__global__ void __launch_bounds__(kThreads) stream_kernel(StreamParams p, bool per_warp) {
  extern __shared__ double acc[];
  const int64_t item = blockIdx.x;
  const int64_t g = item / p.chunks, c = item % p.chunks;
  if (!stream_group_active(p, g)) return;  // block-uniform
  const bool reduces = stream_pass_reduces(p.pass);
  const int64_t copies = reduces && per_warp ? kWarps : 1;
  if (reduces)
    for (int64_t s = threadIdx.x; s < copies * p.width; s += blockDim.x) acc[s] = 0.0;
  __syncthreads();
  const int64_t begin = c * p.chunk, end = min(p.n, (c + 1) * p.chunk);
  if (reduces && per_warp) {
    warp_uniform_vectors<S, KMAX, DIM>(p, g, begin, end, WarpSink<false>{acc + (threadIdx.x / 32) * p.width, true});
  } else if (reduces) {
    warp_uniform_vectors<S, KMAX, DIM>(p, g, begin, end, WarpSink<true>{acc, true});
  } else {
    NoSink sink;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) stream_vector<S, KMAX, DIM>(p, g, i, sink);
  }
  __syncthreads();
  if (!reduces) return;
  for (int64_t s = threadIdx.x; s < p.width; s += blockDim.x) {
    double v = 0.0;
    for (int64_t w = 0; w < copies; ++w) v += acc[w * p.width + s];
    p.partials[item * p.width + s] = v;
  }
}

template <class S, int KMAX, int DIM>
int launch(const StreamParams& p, cudaStream_t stream) {
  const int64_t items = p.groups * p.chunks;
  const bool per_warp = p.width <= kWarpSinkMaxWidth;
  const size_t copies = per_warp ? kWarps : 1;
  const size_t smem = stream_pass_reduces(p.pass) ? sizeof(double) * copies * static_cast<size_t>(p.width) : 0;
  stream_kernel<S, KMAX, DIM><<<static_cast<unsigned>(items), kThreads, smem, stream>>>(p, per_warp);
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
  return p.kind == DType::kF64 ? launch_for_dim<double>(p, s) : launch_for_dim<float>(p, s);
}

}  // namespace edkm::kernels
