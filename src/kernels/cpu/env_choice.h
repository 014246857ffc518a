#pragma once
// The run-time choice of a CPU kernel's build: what the CPU has, capped by an environment variable.
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

namespace edkm::kernels {

// An environment variable's value among `choices`: its index, or -1 when it is unset. A value that
// is none of them is ignored with a warning naming the variable and the choices (a typo such as
// EDKM_STREAM_ISA=AVX2 silently kept the default path).
inline int env_choice(const char* name, std::initializer_list<const char*> choices) {
  const char* value = std::getenv(name);
  if (value == nullptr) return -1;
  int i = 0;
  std::string list;
  for (const char* c : choices) {
    if (std::strcmp(value, c) == 0) return i;
    list += (i++ ? ", " : "") + std::string(c);
  }
  TORCH_WARN("edkm: ", name, "='", value, "' is not one of ", list, ": ignored");
  return -1;
}

/// `best` capped by the variable `name`, whose i-th choice stands for the enum value i (unset or
/// unknown: `best`).
template <class Isa>
Isa capped_by_env(Isa best, const char* name, std::initializer_list<const char*> choices) {
  const int cap = env_choice(name, choices);
  return cap >= 0 ? std::min(best, static_cast<Isa>(cap)) : best;
}

/// The x86 vector level of this CPU for the AVX2 / AVX-512 builds of the streaming passes and the
/// head-loss rows (compiled -mavx2 -mfma and -mavx512f -mavx512dq): 2 with AVX-512 F + DQ, 1 with
/// AVX2 + FMA, 0 otherwise (and off x86).
inline int cpu_vector_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

}  // namespace edkm::kernels
