// CUDA twin of kernels/cpu/lut_kernel.cpp: the LUT-GEMV (one warp per output row, the row's LUT
// in shared memory, every lane unpacking its own indices with the shared lut_math.h) and the
// decode of rows into a dense fp32 tile (the LUT-GEMM multiplies that tile with cuBLAS). No ATen
// here: raw pointers, a params struct and a stream.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/lut_math.h"

namespace edkm::kernels {
namespace {

constexpr int kWarps = 8;

__global__ void lut_gemv_kernel(LutParams p, const float* __restrict__ x, int m, float* __restrict__ y) {
  __shared__ float s_lut[kWarps][256];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Rows walked grid-stride: any number of rows launches.
  for (int64_t r = int64_t(blockIdx.x) * kWarps + warp; r < p.out; r += int64_t(gridDim.x) * kWarps) {
    const float* lut = p.lut + (r / p.rows_per_lut) * p.lut_stride;
    __syncwarp();
    for (int k = lane; k < p.lut_stride; k += 32) s_lut[warp][k] = lut[k];
    __syncwarp();
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    const uint64_t row_bit = uint64_t(r) * uint64_t(p.in) * uint64_t(p.bits);
    for (int64_t c = lane; c < p.in; c += 32) {
      const float w = s_lut[warp][lut_index_at(p.packed, row_bit + uint64_t(c) * uint64_t(p.bits), p.bits)];
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < m) acc[j] = __fmaf_rn(w, x[j * p.in + c], acc[j]);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float v = acc[j];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
      if (lane == 0 && j < m) y[j * p.out + r] = lut_finish(p, r, v);
    }
  }
}

__global__ void lut_decode_kernel(LutParams p, int64_t r0, int64_t r1, float* __restrict__ out) {
  const int64_t n = (r1 - r0) * p.in;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = r0 + i / p.in, c = i % p.in;
    const float w = lut_weight(p, r, c);
    out[i] = p.scale ? w * p.scale[r] : w;
  }
}

}  // namespace

int lut_gemv_cuda(const LutParams& p, const float* x, int64_t m, float* y, void* stream) {
  if (p.out == 0) return 0;
  const int64_t blocks = std::min<int64_t>((p.out + kWarps - 1) / kWarps, int64_t{1} << 20);
  lut_gemv_kernel<<<static_cast<unsigned>(blocks), kWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(
      p, x, static_cast<int>(m), y);
  return static_cast<int>(cudaGetLastError());
}

int lut_decode_cuda(const LutParams& p, int64_t r0, int64_t r1, float* out, void* stream) {
  const int64_t n = (r1 - r0) * p.in;
  if (n == 0) return 0;
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, int64_t{1} << 20);
  lut_decode_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(p, r0, r1, out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace edkm::kernels
