#include "kernels/host_allocator.h"

#include <malloc.h>

#include <cstdlib>

namespace gemma {

void keep_large_host_allocations() {
  mallopt(M_MMAP_MAX, 0);              // no block gets its own mapping
  mallopt(M_TRIM_THRESHOLD, 1 << 30);  // keep up to 1 GiB free at the heap's top
  mallopt(M_TOP_PAD, 64 << 20);        // and grow it 64 MB at a time
  // read by LibTorch at its first allocation
  setenv("THP_MEM_ALLOC_ENABLE", "1", /*overwrite=*/0);
}

}  // namespace gemma
