// CUDA twin of kernels/cpu/lut_kernel.cpp: the LUT-GEMV and the decode of rows into a dense fp32
// tile (the LUT-GEMM multiplies that tile with cuBLAS). No ATen here: raw pointers, a params
// struct and a stream. GEMV kernels, each with the LUTs of its rows in shared memory:
//  - rows (the default where in % 32 == 0 and x fits in shared memory; below, with why): a warp
//    per 2 rows, a step's packed words all loaded before its arithmetic, the next step's during it;
//  - tiled (in % 32 == 0, x fits in shared memory): x staged once per block in shared memory, each
//    lane loading a run of 32 indices as BITS aligned 32-bit words (a warp reads 128 * BITS
//    contiguous bytes) and unpacking them in registers (lut_index_in_words, compile-time BITS);
//  - warp (any shape): every lane unpacks its own indices two bytes at a time (lut_index_at).
// EDKM_LUT_CUDA_KERNEL=rows|tiled|warp forces one (where the shape allows; benchmarks compare them);
// rows2 opts into a tuned rows kernel not yet run on a GPU (below).
// A fourth, "wide" (2 rows per warp, x read through the read-only cache, no staging), ran on the
// H100 at 37 us for 11008x4096 at 3 bits against the rows kernel's 20: removed.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
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

// --- rows: the default where in % 32 == 0 ----------------------------------------------------------
// Measured first on an H100 (benchmarks/results/gpu_h100/): the tiled and wide kernels run at
// ~1.2 T weights/s whatever the bits (3-bit 11008x4096 in 42 / 37 us, 13% of HBM bandwidth), and
// their SASS shows why: the compiler issues a lane's BITS word loads one by one, each just before
// its first use, so every 32-index run waits for DRAM up to BITS times, and with m a runtime value
// the predicated-off x reads and FMAs of the other batch rows take issue slots too. This kernel:
//  - a warp takes R = 2 rows (each x read from shared memory serves both) and each lane U runs of
//    32 indices per row per step (R * U * BITS words, 8-24), loaded by volatile PTX loads that stay
//    where they are written: all of a step's words are issued together, and the next step's (the
//    same rows further on, or the warp's next row pair) before this step's arithmetic;
//  - the batch size M is a template parameter: no predicated-off work;
//  - x staged once per block (float4 loads when aligned) in the padded layout of the tiled kernel
//    (conflict-free column reads), the grid sized to the resident blocks so that staging is paid
//    once per block, not once per row pair.
// Per weight and batch row: a shift and a mask (a funnel shift where an index straddles two
// words), the LUT read from shared memory, the FMA, and half an x read. Measured on an H100 at
// 11008x4096, 3 bits: 20.4 us (2.1x the tiled kernel, 1.7x cuBLAS bf16); Nsight Compute there:
// 80 registers (24 resident warps per SM), 67% of issue slots used, L1 / shared-memory pipe at 62%,
// DRAM at 21%: bound by instruction issue and shared-memory reads, no longer by memory latency.
constexpr int kRowsWarps = 8;
constexpr int kRowsPerWarp = 2;

__device__ __forceinline__ uint32_t ldg_stream(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

template <int BITS>
__device__ __forceinline__ uint32_t index_of(const uint32_t* w, int j) {  // j compile-time after unrolling
  const int bit = j * BITS, word = bit >> 5, off = bit & 31;
  const uint32_t v = off + BITS > 32 ? __funnelshift_r(w[word], w[word + 1], off) : w[word] >> off;
  return v & ((1u << BITS) - 1u);
}

// rows2 (TUNED, opt-in: EDKM_LUT_CUDA_KERNEL=rows2; written after run 2 from the sm_90 SASS, not yet
// run on a GPU): the same kernel with three changes that the SASS says take ~4.2 instead of ~5.4
// instructions per weight and batch row: the LUT address is the index's shift and mask ORed into a
// LUT base aligned to the LUT's size (no add; the read is PTX ld.shared on the 32-bit address),
// x is staged with runs padded to 36 floats and read as float4 (a quarter of the x reads, still
// conflict-free: 8 lanes of a quarter-warp hit banks 4 L .. 4 L + 3), and registers are capped
// (64 at 1-4 bits: 32 resident warps per SM instead of 24) with fewer runs per step so that
// nothing spills at one batch row.

// Runs of 32 indices per lane and step (R * U * BITS words in each of the two buffers), and the
// resident blocks the register budget is set for (0: no cap).
template <int BITS, bool TUNED>
__host__ __device__ constexpr int rows_runs_per_step() {
  if (TUNED) return BITS == 1 ? 4 : BITS <= 3 ? 2 : 1;
  return BITS <= 3 ? 4 : BITS <= 6 ? 2 : 1;
}
template <int BITS, bool TUNED>
__host__ __device__ constexpr int rows_min_blocks() {
  return TUNED ? (BITS <= 4 ? 4 : 3) : 0;
}
// Floats a staged 32-run of x takes (33: conflict-free scalar reads; 36: 16-byte aligned float4).
template <bool TUNED>
__host__ __device__ constexpr int rows_run_floats() {
  return TUNED ? 36 : 33;
}

// This warp's 2 LUTs; TUNED: each at a multiple of its size (2^BITS floats), for the OR.
template <int BITS, bool TUNED>
struct alignas(TUNED ? 1024 : 4) RowsLuts {
  float v[kRowsWarps][kRowsPerWarp][1 << BITS];
};

// The LUTs' static shared memory (counted with the dynamic x in the 48 KiB a launch may use without
// opting in).
template <int BITS, bool TUNED>
constexpr size_t rows_lut_bytes() {
  return sizeof(RowsLuts<BITS, TUNED>);
}

__device__ __forceinline__ float lds_f32(uint32_t address) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(address));
  return v;
}

template <int BITS, int M, bool TUNED>
__global__ void __launch_bounds__(kRowsWarps * 32, rows_min_blocks<BITS, TUNED>())
    lut_gemv_rows_kernel(LutParams p, const float* __restrict__ x, float* __restrict__ y) {
  constexpr int K = 1 << BITS, R = kRowsPerWarp, U = rows_runs_per_step<BITS, TUNED>();
  constexpr int RUN = rows_run_floats<TUNED>();
  extern __shared__ float4 s_x4[];  // M x xs floats: run k of batch row q at q * xs + RUN k
  float* s_x = reinterpret_cast<float*>(s_x4);
  __shared__ RowsLuts<BITS, TUNED> s_lut;
  const int in = static_cast<int>(p.in);
  const int xs = TUNED ? in / 32 * RUN : static_cast<int>(padded_column(p.in));  // floats per staged row of x
  // Where column c of batch row j is staged (RUN 33: c + c / 32, the tiled kernel's layout).
  auto staged = [&](int j, int c) { return j * xs + (TUNED ? (c >> 5) * RUN + (c & 31) : c + (c >> 5)); };
  if ((reinterpret_cast<uintptr_t>(x) & 15) == 0) {  // float4 loads: 4 columns of one 32-run
    const int n4 = M * in / 4;
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(x) + i);
      const int j = (4 * i) / in, c = 4 * i - j * in, at = staged(j, c);
      if constexpr (TUNED) {
        s_x4[at / 4] = v;
      } else {
        float* d = s_x + at;
        d[0] = v.x, d[1] = v.y, d[2] = v.z, d[3] = v.w;
      }
    }
  } else {
    for (int i = threadIdx.x; i < M * in; i += blockDim.x) {
      const int j = i / in, c = i - j * in;
      s_x[staged(j, c)] = x[i];
    }
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t runs = p.in / 32, steps = (runs + 32 * U - 1) / (32 * U);
  const int64_t pairs = (p.out + R - 1) / R, stride = int64_t(gridDim.x) * kRowsWarps;
  int64_t pr = int64_t(blockIdx.x) * kRowsWarps + warp;
  if (pr >= pairs) return;  // whole warps; no block barrier follows
  const uint32_t* packed = reinterpret_cast<const uint32_t*>(p.packed);
  // Words of step `st` of row pair `q`: a row past the end repeats the last row (written nowhere),
  // a run past the end loads nothing (its words stay 0 and its arithmetic is skipped).
  auto load = [&](uint32_t(&buf)[R][U][BITS], int64_t q, int64_t st) {
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int64_t r = min(q * R + i, p.out - 1);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t run = (st * U + u) * 32 + lane;
#pragma unroll
        for (int b = 0; b < BITS; ++b)
          buf[i][u][b] = run < runs ? ldg_stream(packed + (r * runs + run) * BITS + b) : 0u;
      }
    }
  };
  auto stage_luts = [&](int64_t q) {
    __syncwarp();
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const float* lut = p.lut + (min(q * R + i, p.out - 1) / p.rows_per_lut) * p.lut_stride;
      for (int k = lane; k < K; k += 32) s_lut.v[warp][i][k] = __ldg(lut + k);
    }
    __syncwarp();
  };
  uint32_t lut_at[R] = {};  // TUNED: shared-window addresses of this warp's LUTs, aligned to 4 K bytes
  if constexpr (TUNED) {
#pragma unroll
    for (int i = 0; i < R; ++i) lut_at[i] = static_cast<uint32_t>(__cvta_generic_to_shared(&s_lut.v[warp][i][0]));
  }
  uint32_t cur[R][U][BITS], nxt[R][U][BITS];
  load(cur, pr, 0);
  stage_luts(pr);
  float acc[R][M] = {};
  for (int64_t st = 0;;) {
    int64_t npr = pr, nst = st + 1;
    if (nst == steps) npr = pr + stride, nst = 0;
    const bool more = npr < pairs;
    if (more) load(nxt, npr, nst);  // in flight during this step's arithmetic
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int run = static_cast<int>((st * U + u) * 32 + lane);
      if (run >= runs) continue;
      if constexpr (TUNED) {
        const float4* xr = s_x4 + run * (RUN / 4);
#pragma unroll
        for (int t = 0; t < 8; ++t) {  // columns 4t .. 4t + 3 of the run
          float4 xv[M];
#pragma unroll
          for (int q = 0; q < M; ++q) xv[q] = xr[q * (xs / 4) + t];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
#pragma unroll
            for (int i = 0; i < R; ++i) {
              const float wt = lds_f32(lut_at[i] | lut_index4_in_words<BITS>(cur[i][u], 4 * t + e));
#pragma unroll
              for (int q = 0; q < M; ++q) {
                const float xe = e == 0 ? xv[q].x : e == 1 ? xv[q].y : e == 2 ? xv[q].z : xv[q].w;
                acc[i][q] = __fmaf_rn(wt, xe, acc[i][q]);
              }
            }
          }
        }
      } else {
        const float* xr = s_x + run * RUN;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          float xv[M];
#pragma unroll
          for (int q = 0; q < M; ++q) xv[q] = xr[q * xs + j];
#pragma unroll
          for (int i = 0; i < R; ++i) {
            const float wt = s_lut.v[warp][i][index_of<BITS>(cur[i][u], j)];
#pragma unroll
            for (int q = 0; q < M; ++q) acc[i][q] = __fmaf_rn(wt, xv[q], acc[i][q]);
          }
        }
      }
    }
    if (nst == 0) {  // the pair's last step: its rows are done
#pragma unroll
      for (int i = 0; i < R; ++i) {
#pragma unroll
        for (int q = 0; q < M; ++q) {
          float v = acc[i][q];
          for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
          const int64_t r = pr * R + i;
          if (lane == 0 && r < p.out) y[q * p.out + r] = lut_finish(p, r, v);
          acc[i][q] = 0.f;
        }
      }
    }
    if (!more) break;
    if (npr != pr) stage_luts(npr);
    pr = npr, st = nst;
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int b = 0; b < BITS; ++b) cur[i][u][b] = nxt[i][u][b];
  }
}

template <int BITS, int M, bool TUNED>
int launch_rows(const LutParams& p, const float* x, float* y, size_t smem, int device, int sms, cudaStream_t stream) {
  auto kernel = lut_gemv_rows_kernel<BITS, M, TUNED>;
  // Without opting in, a launch may use 48 KiB of shared memory, the static LUTs counted: the first
  // GPU run failed 4096x11008 at 8 bits (45 KiB of x + 16 KiB of LUTs). Set on every such launch:
  // the attribute is the function's, process-wide, and another thread may have lowered it.
  if (smem + rows_lut_bytes<BITS, TUNED>() > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return static_cast<int>(e);
  }
  // Resident blocks per SM for this shared-memory size, asked once per (kernel, size, device).
  struct Seen {
    size_t smem;
    int device, per_sm;
  };
  static thread_local Seen seen{0, -1, 0};
  if (seen.smem != smem || seen.device != device) {
    int per_sm = 0;
    const cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kRowsWarps * 32, smem);
    if (e != cudaSuccess) return static_cast<int>(e);
    seen = Seen{smem, device, std::max(per_sm, 1)};
  }
  const int64_t pairs = (p.out + kRowsPerWarp - 1) / kRowsPerWarp;
  const int64_t blocks = std::min<int64_t>((pairs + kRowsWarps - 1) / kRowsWarps, int64_t{seen.per_sm} * sms);
  kernel<<<static_cast<unsigned>(blocks), kRowsWarps * 32, smem, stream>>>(p, x, y);
  return static_cast<int>(cudaGetLastError());
}

// The rows kernel for m (1..4) rows of x; -1 (not an error) where x staged and the LUTs would pass
// the device's shared memory per block (smem_max).
template <int BITS, bool TUNED>
int launch_rows_m(const LutParams& p, const float* x, int m, float* y, int device, int sms, int smem_max,
                  cudaStream_t stream) {
  const size_t smem = sizeof(float) * static_cast<size_t>(m * (p.in / 32) * rows_run_floats<TUNED>());
  if (smem + rows_lut_bytes<BITS, TUNED>() > static_cast<size_t>(smem_max)) return -1;
  switch (m) {
    case 1:
      return launch_rows<BITS, 1, TUNED>(p, x, y, smem, device, sms, stream);
    case 2:
      return launch_rows<BITS, 2, TUNED>(p, x, y, smem, device, sms, stream);
    case 3:
      return launch_rows<BITS, 3, TUNED>(p, x, y, smem, device, sms, stream);
    default:
      return launch_rows<BITS, 4, TUNED>(p, x, y, smem, device, sms, stream);
  }
}

bool kernel_forced(const char* name) {
  const char* k = std::getenv("EDKM_LUT_CUDA_KERNEL");
  return k && std::strcmp(k, name) == 0;
}

// The current device, its multiprocessors and opt-in shared memory per block; false if CUDA cannot say.
bool device_limits(int& device, int& sms, int& smem_max) {
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  struct Seen {
    int device = -1, sms = 0, smem_max = 0;
  };
  static thread_local Seen seen;
  if (seen.device != device) {
    Seen now;
    now.device = device;
    if (cudaDeviceGetAttribute(&now.smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&now.sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
      return false;
    seen = now;
  }
  sms = seen.sms, smem_max = seen.smem_max;
  return true;
}

// The rows kernel (the default) when the shape and the device allow it; -1 when they do not.
int try_rows(const LutParams& p, const float* x, int64_t m, float* y, cudaStream_t stream) {
  if (p.in % 32 != 0 || reinterpret_cast<uintptr_t>(p.packed) % 4 != 0 || p.bits < 1 || p.bits > 8 ||
      p.lut_stride != (int64_t{1} << p.bits) || m < 1 || m > 4 || p.in > (int64_t{1} << 24))
    return -1;
  if (kernel_forced("tiled") || kernel_forced("warp")) return -1;
  int device = 0, sms = 0, smem_max = 0;
  if (!device_limits(device, sms, smem_max)) return -1;
  const bool tuned = kernel_forced("rows2");
  using Launch = int (*)(const LutParams&, const float*, int, float*, int, int, int, cudaStream_t);
  static constexpr Launch kByBits[2][8] = {
      {launch_rows_m<1, false>, launch_rows_m<2, false>, launch_rows_m<3, false>, launch_rows_m<4, false>,
       launch_rows_m<5, false>, launch_rows_m<6, false>, launch_rows_m<7, false>, launch_rows_m<8, false>},
      {launch_rows_m<1, true>, launch_rows_m<2, true>, launch_rows_m<3, true>, launch_rows_m<4, true>,
       launch_rows_m<5, true>, launch_rows_m<6, true>, launch_rows_m<7, true>, launch_rows_m<8, true>}};
  return kByBits[tuned][p.bits - 1](p, x, static_cast<int>(m), y, device, sms, smem_max, stream);
}

// The tiled kernel when the shape and the device allow it; -1 when they do not.
int try_tiled(const LutParams& p, const float* x, int64_t m, float* y, cudaStream_t stream) {
  if (p.in % 32 != 0 || reinterpret_cast<uintptr_t>(p.packed) % 4 != 0 || p.bits < 1 || p.bits > 8 ||
      p.lut_stride != (int64_t{1} << p.bits) || kernel_forced("warp"))
    return -1;
  int device = 0, sms = 0, smem_max = 0;
  if (!device_limits(device, sms, smem_max)) return -1;
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
  const int rows = try_rows(p, x, m, y, static_cast<cudaStream_t>(stream));
  if (rows == cudaErrorInvalidValue && !kernel_forced("rows") && !kernel_forced("rows2")) {
    // A launch configuration this device refused (run 2 on the H100 found one: shared memory past
    // 48 KiB without the opt-in, since fixed). Not a sticky error: the tiled kernel takes the shape,
    // and the refusal is told once; forced (EDKM_LUT_CUDA_KERNEL=rows, as the tests run it) it is
    // returned.
    static std::atomic<bool> told{false};
    if (!told.exchange(true)) {
      std::fprintf(stderr,
                   "edkm: the rows LUT-GEMV kernel could not launch for %lldx%lld at %d bits, %lld rows of x "
                   "(invalid argument); the tiled kernel runs instead (told once)\n",
                   static_cast<long long>(p.out), static_cast<long long>(p.in), static_cast<int>(p.bits),
                   static_cast<long long>(m));
    }
  } else if (rows >= 0) {
    return rows;
  }
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
