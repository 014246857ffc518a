#pragma once
// An environment variable's value among `choices`: its index, or -1 when it is unset. A value that
// is none of them is ignored with a warning naming the variable and the choices (a typo such as
// EDKM_STREAM_ISA=AVX2 silently kept the default path).
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

namespace edkm::kernels {

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

}  // namespace edkm::kernels
