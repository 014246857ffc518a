// CUDA twin of kernels/cpu/table_kernel.cpp: the table (uniquification) engine over 16-bit weight
// patterns. No ATen here: raw pointers, a params struct and a stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/table_math.h"

namespace edkm::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;
constexpr unsigned kFullMask = 0xFFFFFFFFu;

// Histogram: the pattern range is split in kHistSlices slices (blockIdx.y); each block keeps the
// bins of its slice in dynamic shared memory (16384 x 4 B = 64 KB).
constexpr int kHistSlices = 4;
constexpr int kHistBins = static_cast<int>(kTableSize / kHistSlices);
constexpr size_t kHistSmem = sizeof(unsigned int) * kHistBins;

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks); }

__global__ void histogram_kernel(TableParams p, int64_t* counts) {
  extern __shared__ unsigned int bins[];
  const uint32_t lo = blockIdx.y * static_cast<uint32_t>(kHistBins);
  for (int j = threadIdx.x; j < kHistBins; j += blockDim.x) bins[j] = 0u;
  __syncthreads();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t rel = static_cast<uint32_t>(pattern_at(p.weight, i, p.dtype)) - lo;
    if (rel < static_cast<uint32_t>(kHistBins)) atomicAdd(&bins[rel], 1u);
  }
  __syncthreads();
  auto* out = reinterpret_cast<unsigned long long*>(counts) + lo;
  for (int j = threadIdx.x; j < kHistBins; j += blockDim.x) {
    const unsigned int c = bins[j];
    if (c != 0u) atomicAdd(&out[j], static_cast<unsigned long long>(c));
  }
}

__global__ void gather_kernel(TableParams p, const float* __restrict__ table, void* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.n; i += int64_t(gridDim.x) * blockDim.x)
    store_value<float>(out, i, table[pattern_at(p.weight, i, p.dtype)], p.dtype);
}

// Sum of `x` over the lanes in `peers` (lanes sharing one key, the calling lane included), exact
// in the lowest peer lane (other lanes hold partial sums). A tree reduction over the peer group.
// Must be called by all 32 lanes of the warp.
__device__ double reduce_peers(unsigned peers, double x) {
  const unsigned lane = threadIdx.x & 31u;
  unsigned rel_pos = __popc(peers & ((1u << lane) - 1u));  // own position among the peers
  peers &= (0xFFFFFFFEu << lane);                          // only peers with a higher lane
  while (__any_sync(kFullMask, peers != 0u)) {
    const int next = __ffs(peers);  // next-higher remaining peer (1-based), 0 if none
    const double t = __shfl_sync(kFullMask, x, next > 0 ? next - 1 : 0);
    if (next) x += t;
    peers &= ~__ballot_sync(kFullMask, rel_pos & 1u);  // odd positions were folded in: drop them
    rel_pos >>= 1;
  }
  return x;
}

// Warp-aggregated scatter-add: lanes with equal patterns combine their gradients first, then one
// double atomicAdd per distinct pattern per warp.
__global__ void scatter_add_kernel(TableParams p, const void* grad, double* sums) {
  // The loop bound is block-uniform so that whole warps stay converged for the warp intrinsics.
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t base = blockIdx.x * int64_t(blockDim.x); base < p.n; base += stride) {
    const int64_t i = base + threadIdx.x;
    const bool valid = i < p.n;
    const uint32_t key = valid ? static_cast<uint32_t>(pattern_at(p.weight, i, p.dtype)) : 0x10000u;
    const double v = valid ? static_cast<double>(load_value<float>(grad, i, p.dtype)) : 0.0;
    const unsigned peers = __match_any_sync(kFullMask, key);
    const double s = reduce_peers(peers, v);
    const unsigned lane = threadIdx.x & 31u;
    if (valid && static_cast<unsigned>(__ffs(peers) - 1) == lane) atomicAdd(&sums[key], s);
  }
}

__global__ void backward_kernel(TableParams p, const void* grad, const float* __restrict__ slope,
                                const float* __restrict__ shift, void* dw) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint16_t b = pattern_at(p.weight, i, p.dtype);
    // Rounded twice, as the CPU twin (nvcc would contract a * b + c into one FMA).
    store_value<float>(dw, i, __fadd_rn(__fmul_rn(load_value<float>(grad, i, p.dtype), slope[b]), shift[b]), p.dtype);
  }
}

}  // namespace

int table_histogram_cuda(const TableParams& p, int64_t* counts, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  cudaError_t err = cudaMemsetAsync(counts, 0, sizeof(int64_t) * kTableSize, s);
  if (err != cudaSuccess) return static_cast<int>(err);
  if (p.n == 0) return 0;
  err =
      cudaFuncSetAttribute(histogram_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kHistSmem));
  if (err != cudaSuccess) return static_cast<int>(err);
  // Every block scans its whole grid-stride share and flushes 16384 bins, so keep the grid near
  // what is resident rather than one block per 256 weights.
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0)
    sms = 32;
  const int64_t blocks_x = std::min<int64_t>(blocks_for(p.n), std::max<int64_t>(1, 2 * int64_t(sms)));
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(kHistSlices));
  histogram_kernel<<<grid, kThreads, kHistSmem, s>>>(p, counts);
  return static_cast<int>(cudaGetLastError());
}

int table_gather_cuda(const TableParams& p, const float* table, void* out, void* stream) {
  if (p.n == 0) return 0;
  gather_kernel<<<static_cast<unsigned>(blocks_for(p.n)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, table,
                                                                                                            out);
  return static_cast<int>(cudaGetLastError());
}

int table_scatter_add_cuda(const TableParams& p, const void* grad, double* sums, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const cudaError_t err = cudaMemsetAsync(sums, 0, sizeof(double) * kTableSize, s);
  if (err != cudaSuccess) return static_cast<int>(err);
  if (p.n == 0) return 0;
  scatter_add_kernel<<<static_cast<unsigned>(blocks_for(p.n)), kThreads, 0, s>>>(p, grad, sums);
  return static_cast<int>(cudaGetLastError());
}

int table_backward_cuda(const TableParams& p, const void* grad, const float* slope, const float* shift, void* dw,
                        void* stream) {
  if (p.n == 0) return 0;
  backward_kernel<<<static_cast<unsigned>(blocks_for(p.n)), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, grad, slope, shift, dw);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace edkm::kernels
