// retain_freed_host_memory: glibc's allocator keeps freed large blocks for reuse (edkm/memory.h).
#include <climits>

#include "edkm/memory.h"
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace edkm {

bool retain_freed_host_memory() {
#if defined(__GLIBC__)
  // No mmap for large blocks (secondary arenas still fall back to mmap when their heap cannot
  // grow), and no trimming of the heap top below 2 GiB of free space.
  const bool mmap_off = mallopt(M_MMAP_MAX, 0) == 1;
  const bool trim_off = mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
  return mmap_off && trim_off;
#else
  return false;
#endif
}

}  // namespace edkm
