#pragma once
// Instruction-set variants of the CPU streaming passes and their run-time choice.
#include <cstdint>
#include <string>

#include "kernels/stream_math.h"

namespace edkm::kernels {

/// The CPU code path of the streaming passes.
enum class StreamIsa : int32_t {
  kScalar = 0,  ///< stream_vector per weight (the reference; every cluster_dim and dtype)
  kAvx2 = 1,    ///< cluster_dim 1, fp32 compute: 16-lane blocks, AVX2 + FMA, SLEEF exp
  kAvx512 = 2,  ///< the same with AVX-512
};

#if defined(EDKM_WITH_SLEEF)
void stream_items_avx2(const StreamParams& p, int64_t begin, int64_t end);
void stream_items_avx512(const StreamParams& p, int64_t begin, int64_t end);
#endif

/// The best path this CPU and build support; EDKM_STREAM_ISA=scalar|avx2|avx512 in the
/// environment caps it (for comparisons; a path the CPU lacks is never chosen).
StreamIsa stream_isa_available();
/// Sets the path for this process (tests and benchmarks): capped at what is available.
void set_stream_isa(StreamIsa isa);
StreamIsa stream_isa();
std::string to_string(StreamIsa isa);

}  // namespace edkm::kernels
