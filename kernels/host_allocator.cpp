#include "kernels/host_allocator.h"

#include <malloc.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

namespace gemma {

void keep_large_host_allocations() {
  mallopt(M_MMAP_MAX, 0);              // no block gets its own mapping
  mallopt(M_TRIM_THRESHOLD, 1 << 30);  // keep up to 1 GiB free at the heap's top
  mallopt(M_TOP_PAD, 64 << 20);        // and grow it 64 MB at a time
  // read by LibTorch at its first allocation
  setenv("THP_MEM_ALLOC_ENABLE", "1", /*overwrite=*/0);
}

void collapse_into_huge_pages(const void* data, size_t bytes) {
  constexpr int kCollapse = 25;  // MADV_COLLAPSE (Linux 6.1); glibc 2.36's headers lack it
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (bytes == 0) return;
  const auto first = reinterpret_cast<uintptr_t>(data) & ~(kHuge - 1);
  const uintptr_t last = reinterpret_cast<uintptr_t>(data) + bytes;
  // Each region advised first, so that the heap's mappings in it (which LibTorch's own advice on
  // a tensor splits at the tensor's ends) carry the same flags and merge: a region that spans
  // two mappings cannot be collapsed. Failures are harmless: EINVAL from an older kernel, ENOMEM
  // for a region that is not all mapped, EAGAIN when no 2 MB page is free.
  for (uintptr_t region = first; region < last; region += kHuge) {
    // NOLINTNEXTLINE(performance-no-int-to-ptr): madvise takes the region's address
    void* at = reinterpret_cast<void*>(region);
    madvise(at, kHuge, MADV_HUGEPAGE);
    madvise(at, kHuge, kCollapse);
  }
}

std::optional<int64_t> available_host_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    if (line.rfind("MemAvailable:", 0) == 0) return std::stoll(line.substr(13)) * 1024;
  }
  return std::nullopt;
}

}  // namespace gemma
