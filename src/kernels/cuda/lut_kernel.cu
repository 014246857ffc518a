// CUDA twin of kernels/cpu/lut_kernel.cpp: the LUT-GEMV and the decode of rows into a dense fp32
// tile (the LUT-GEMM multiplies that tile with cuBLAS). No ATen here: raw pointers, a params
// struct and a stream. Two GEMV kernels, both one warp per output row with the row's LUT in
// shared memory:
//  - tiled (in % 32 == 0, x fits in shared memory): x staged once per block in shared memory, each
//    lane loading a run of 32 indices as BITS aligned 32-bit words (a warp reads 128 * BITS
//    contiguous bytes) and unpacking them in registers (lut_index_in_words, compile-time BITS);
//  - warp (any shape): every lane unpacks its own indices two bytes at a time (lut_index_at).
//  - wide (opt-in, EDKM_LUT_CUDA_KERNEL=wide; in % 32 == 0, x 16-byte aligned): no staging and no
//    block barrier: a warp takes 2 rows, a lane loads the 32-index runs of both rows (BITS words
//    each) before it unpacks any, reads x as float4 through the read-only cache (each x value
//    serving both rows), and blocks are small (4 warps, 2 KiB-8 KiB of LUTs) so many are resident.
//    Written after the H200 measurements (the tiled kernel at 8-19% of HBM bandwidth, where its
//    16 resident warps per SM and 3 loads in flight per lane leave the memory latency exposed);
//    not yet measured on a GPU, so not the default.
// EDKM_LUT_CUDA_KERNEL=warp forces the second (benchmarks compare them).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

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

constexpr int kTiledWarps = 8;

// x staged with one padding float per 32 (column c at c + c / 32): lane L reading column
// 32 (L + 32 k) + j of its run hits bank (33 L + j) % 32 = (L + j) % 32, no two lanes alike.
__host__ __device__ __forceinline__ int64_t padded_column(int64_t c) { return c + (c >> 5); }

template <int BITS>
__global__ void __launch_bounds__(kTiledWarps * 32)
    lut_gemv_tiled_kernel(LutParams p, const float* __restrict__ x, int m, float* __restrict__ y) {
  extern __shared__ float smem[];
  const int64_t xs = padded_column(p.in);  // floats per staged row of x
  float* s_x = smem;                       // m x xs
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* s_lut = smem + int64_t(m) * xs + warp * 256;
  for (int64_t i = threadIdx.x; i < int64_t(m) * p.in; i += blockDim.x) {
    const int64_t j = i / p.in, c = i - j * p.in;
    s_x[j * xs + padded_column(c)] = x[i];
  }
  __syncthreads();
  const int64_t runs = p.in / 32;  // 32-index runs per row, BITS words each
  const uint32_t* packed = reinterpret_cast<const uint32_t*>(p.packed);
  for (int64_t r = int64_t(blockIdx.x) * kTiledWarps + warp; r < p.out; r += int64_t(gridDim.x) * kTiledWarps) {
    const float* lut = p.lut + (r / p.rows_per_lut) * p.lut_stride;
    __syncwarp();
    for (int k = lane; k < (1 << BITS); k += 32) s_lut[k] = lut[k];
    __syncwarp();
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    const uint32_t* row = packed + r * runs * BITS;
    for (int64_t run = lane; run < runs; run += 32) {
      uint32_t w[BITS];
#pragma unroll
      for (int b = 0; b < BITS; ++b) w[b] = __ldg(row + run * BITS + b);
      const float* xr = s_x + run * 33;  // padded_column(32 run)
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        const float wt = s_lut[lut_index_in_words<BITS>(w, j)];
#pragma unroll
        for (int q = 0; q < 4; ++q)
          if (q < m) acc[q] = __fmaf_rn(wt, xr[q * xs + j], acc[q]);
      }
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      float v = acc[q];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
      if (lane == 0 && q < m) y[q * p.out + r] = lut_finish(p, r, v);
    }
  }
}

template <int BITS>
int launch_tiled(const LutParams& p, const float* x, int m, float* y, size_t smem, int blocks, cudaStream_t stream) {
  auto kernel = lut_gemv_tiled_kernel<BITS>;
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  kernel<<<static_cast<unsigned>(blocks), kTiledWarps * 32, smem, stream>>>(p, x, m, y);
  return static_cast<int>(cudaGetLastError());
}

constexpr int kWideWarps = 4;
constexpr int kWideRows = 2;  // rows per warp

template <int BITS>
__global__ void __launch_bounds__(kWideWarps * 32)
    lut_gemv_wide_kernel(LutParams p, const float* __restrict__ x, int m, float* __restrict__ y) {
  constexpr int K = 1 << BITS;
  __shared__ float s_lut[kWideWarps][kWideRows][K];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t runs = p.in / 32;  // 32-index runs per row, BITS words each
  const uint32_t* packed = reinterpret_cast<const uint32_t*>(p.packed);
  const int64_t pairs = (p.out + kWideRows - 1) / kWideRows;
  for (int64_t pr = int64_t(blockIdx.x) * kWideWarps + warp; pr < pairs; pr += int64_t(gridDim.x) * kWideWarps) {
    int64_t rows[kWideRows];  // a row past the end repeats the last one and writes nothing
#pragma unroll
    for (int i = 0; i < kWideRows; ++i) rows[i] = min(pr * kWideRows + i, p.out - 1);
    __syncwarp();
#pragma unroll
    for (int i = 0; i < kWideRows; ++i) {
      const float* lut = p.lut + (rows[i] / p.rows_per_lut) * p.lut_stride;
      for (int k = lane; k < K; k += 32) s_lut[warp][i][k] = lut[k];
    }
    __syncwarp();
    float acc[kWideRows][4] = {};
    for (int64_t run = lane; run < runs; run += 32) {
      uint32_t w[kWideRows][BITS];
#pragma unroll
      for (int i = 0; i < kWideRows; ++i)
#pragma unroll
        for (int b = 0; b < BITS; ++b) w[i][b] = __ldg(packed + (rows[i] * runs + run) * BITS + b);
#pragma unroll
      for (int q = 0; q < 8; ++q) {  // columns 32 run + 4q .. + 3
        float4 xv[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (j < m) xv[j] = __ldg(reinterpret_cast<const float4*>(x + j * p.in + run * 32) + q);
#pragma unroll
        for (int i = 0; i < kWideRows; ++i) {
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            const float wt = s_lut[warp][i][lut_index_in_words<BITS>(w[i], 4 * q + t)];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              if (j >= m) continue;
              const float xs = t == 0 ? xv[j].x : t == 1 ? xv[j].y : t == 2 ? xv[j].z : xv[j].w;
              acc[i][j] = __fmaf_rn(wt, xs, acc[i][j]);
            }
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kWideRows; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float v = acc[i][j];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0 && j < m && pr * kWideRows + i < p.out) y[j * p.out + rows[i]] = lut_finish(p, rows[i], v);
      }
    }
  }
}

template <int BITS>
int launch_wide(const LutParams& p, const float* x, int m, float* y, cudaStream_t stream) {
  const int64_t pairs = (p.out + kWideRows - 1) / kWideRows;
  const int64_t blocks = std::min<int64_t>((pairs + kWideWarps - 1) / kWideWarps, int64_t{1} << 20);
  lut_gemv_wide_kernel<BITS><<<static_cast<unsigned>(blocks), kWideWarps * 32, 0, stream>>>(p, x, m, y);
  return static_cast<int>(cudaGetLastError());
}

bool kernel_forced(const char* name) {
  const char* k = std::getenv("EDKM_LUT_CUDA_KERNEL");
  return k && std::strcmp(k, name) == 0;
}

// The wide kernel when asked for (EDKM_LUT_CUDA_KERNEL=wide) and the shape allows it; -1 otherwise.
int try_wide(const LutParams& p, const float* x, int64_t m, float* y, cudaStream_t stream) {
  if (!kernel_forced("wide") || p.in % 32 != 0 || reinterpret_cast<uintptr_t>(p.packed) % 4 != 0 ||
      reinterpret_cast<uintptr_t>(x) % 16 != 0 || p.bits < 1 || p.bits > 8 || p.lut_stride != (int64_t{1} << p.bits))
    return -1;
  using Launch = int (*)(const LutParams&, const float*, int, float*, cudaStream_t);
  static constexpr Launch kByBits[8] = {launch_wide<1>, launch_wide<2>, launch_wide<3>, launch_wide<4>,
                                        launch_wide<5>, launch_wide<6>, launch_wide<7>, launch_wide<8>};
  return kByBits[p.bits - 1](p, x, static_cast<int>(m), y, stream);
}

// The tiled kernel when the shape and the device allow it; -1 when they do not.
int try_tiled(const LutParams& p, const float* x, int64_t m, float* y, cudaStream_t stream) {
  if (p.in % 32 != 0 || reinterpret_cast<uintptr_t>(p.packed) % 4 != 0 || p.bits < 1 || p.bits > 8 ||
      p.lut_stride != (int64_t{1} << p.bits) || kernel_forced("warp"))
    return -1;
  int device = 0, smem_max = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return -1;
  const size_t smem = sizeof(float) * static_cast<size_t>(m * padded_column(p.in) + kTiledWarps * 256);
  if (smem > static_cast<size_t>(smem_max)) return -1;
  // A few blocks per SM, each walking rows grid-stride: x is staged once per block.
  // EDKM_LUT_CUDA_BLOCKS_PER_SM (1..32, default 2) sets how many (benchmarks sweep it).
  int64_t per_sm = 2;
  if (const char* e = std::getenv("EDKM_LUT_CUDA_BLOCKS_PER_SM")) per_sm = std::clamp<int64_t>(std::atoll(e), 1, 32);
  const int blocks =
      static_cast<int>(std::min<int64_t>((p.out + kTiledWarps - 1) / kTiledWarps, per_sm * int64_t{sms}));
  using Launch = int (*)(const LutParams&, const float*, int, float*, size_t, int, cudaStream_t);
  static constexpr Launch kByBits[8] = {launch_tiled<1>, launch_tiled<2>, launch_tiled<3>, launch_tiled<4>,
                                        launch_tiled<5>, launch_tiled<6>, launch_tiled<7>, launch_tiled<8>};
  return kByBits[p.bits - 1](p, x, static_cast<int>(m), y, smem, blocks, stream);
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
  const int wide = try_wide(p, x, m, y, static_cast<cudaStream_t>(stream));
  if (wide >= 0) return wide;
  const int tiled = try_tiled(p, x, m, y, static_cast<cudaStream_t>(stream));
  if (tiled >= 0) return tiled;
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
