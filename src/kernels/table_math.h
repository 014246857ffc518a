#pragma once
// Shared math of the table (uniquification) engine kernels: 16-bit bit patterns as table indices.
// One definition for the CPU and CUDA backends. No ATen: raw pointers and plain params.
//
// A weight's "pattern" is its 16-bit encoding: its own bits for bf16/fp16 weights, or, for fp32
// weights that opted in, the bits of its bf16 rounding (round to nearest even).
#include <cstdint>
#include <cstring>

#include "edkm/export.h"
#include "kernels/dtype_math.h"
#include "kernels/host_device.h"

EDKM_INTERNAL_BEGIN
namespace edkm::kernels {

constexpr int64_t kTableSize = 65536;

/// Pattern of element i of `data`: bf16/fp16 words as they are, fp32 through its bf16 rounding.
EDKM_HOST_DEVICE uint16_t pattern_at(const void* data, int64_t i, DType dtype) {
  if (dtype == DType::kF32) return bf16_round_bits(static_cast<const float*>(data)[i]);
  return static_cast<const uint16_t*>(data)[i];
}

/// Parameters of the four table kernels. `weight`: N elements of `dtype` (kBF16, kF16, or kF32
/// read as its bf16 rounding): the patterns; gradients and outputs have the same dtype.
struct TableParams {
  const void* weight = nullptr;
  int64_t n = 0;
  DType dtype = DType::kBF16;
};

// counts[65536] (int64, zeroed by the kernel): weights per pattern.
void table_histogram_cpu(const TableParams& p, int64_t* counts);
// out[i] = table[pattern(w_i)], written in the weight's kind. table: 65536 floats.
void table_gather_cpu(const TableParams& p, const float* table, void* out);
// sums[65536] (double, zeroed by the kernel) += grad_i at pattern(w_i). grad: N of `kind`.
void table_scatter_add_cpu(const TableParams& p, const void* grad, double* sums);
// dw[i] = grad_i * slope[pattern] + shift[pattern], written in the weight's kind.
void table_backward_cpu(const TableParams& p, const void* grad, const float* slope, const float* shift, void* dw);

#if defined(EDKM_WITH_CUDA)
// CUDA twins on `stream` (a cudaStream_t); return a cudaError_t as int.
int table_histogram_cuda(const TableParams& p, int64_t* counts, void* stream);
int table_gather_cuda(const TableParams& p, const float* table, void* out, void* stream);
int table_scatter_add_cuda(const TableParams& p, const void* grad, double* sums, void* stream);
int table_backward_cuda(const TableParams& p, const void* grad, const float* slope, const float* shift, void* dw,
                        void* stream);
#endif

}  // namespace edkm::kernels
EDKM_INTERNAL_END
