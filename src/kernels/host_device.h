#pragma once
// EDKM_HOST_DEVICE: inline on the host, __host__ __device__ under nvcc.
#if defined(__CUDACC__)
#define EDKM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define EDKM_HOST_DEVICE inline
#endif
