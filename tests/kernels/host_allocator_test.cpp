// collapse_into_huge_pages: the bytes under and around the range are unchanged (it moves pages,
// never their contents), and on a kernel with MADV_COLLAPSE (Linux 6.1) and transparent huge
// pages not off, the range then lies on 2 MB pages.
#include "kernels/host_allocator.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sys/mman.h>
#include <sys/utsname.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

namespace gemma {
namespace {

// AnonHugePages (kB) of the mapping that holds `p`, from /proc/self/smaps; -1 if not found.
int64_t huge_kb_of_mapping(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-') {
      inside = lo <= at && at < hi;
      continue;
    }
    if (inside && line.rfind("AnonHugePages:", 0) == 0)
      return std::stoll(line.substr(line.find_first_of("0123456789")));
  }
  return -1;
}

bool kernel_collapses() {
  std::ifstream enabled("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(enabled, modes);
  if (modes.empty() || modes.find("[never]") != std::string::npos) return false;
  utsname name{};
  if (uname(&name) != 0) return false;
  int major = 0, minor = 0;
  std::istringstream release(name.release);
  char dot = 0;
  release >> major >> dot >> minor;
  return major > 6 || (major == 6 && minor >= 1);
}

TEST(CollapseIntoHugePages, KeepsEveryByteUnderAndAroundTheRange) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  // 9 MB of random bytes from malloc (a fresh mapping on 4 KB pages in this binary); the range
  // starts and ends mid-page, inside 2 MB regions it shares with bytes outside it
  constexpr size_t kBytes = size_t{9} << 20;
  const std::unique_ptr<uint8_t, decltype(&std::free)> block(
      static_cast<uint8_t*>(std::malloc(kBytes)), &std::free);
  ASSERT_NE(block, nullptr);
  const torch::Tensor before =
      torch::randint(0, 256, {static_cast<int64_t>(kBytes)}, gen, torch::kUInt8);
  std::memcpy(block.get(), before.data_ptr<uint8_t>(), kBytes);
  uint8_t* const range = block.get() + 1'234'567;
  collapse_into_huge_pages(range, (size_t{5} << 20) + 4321);
  collapse_into_huge_pages(block.get() + 17, 0);  // an empty range: nothing to do
  EXPECT_EQ(std::memcmp(block.get(), before.data_ptr<uint8_t>(), kBytes), 0);
  if (!kernel_collapses()) GTEST_SKIP() << "no MADV_COLLAPSE here: the bytes were checked";
  // the range covers at least one whole 2 MB region
  const int64_t huge_kb = huge_kb_of_mapping(range);
  if (huge_kb < 2048) {
    // not collapsed: a failure of ours only if the kernel collapses that region when asked now
    constexpr uintptr_t kHuge = uintptr_t{2} << 20;
    const uintptr_t region = (reinterpret_cast<uintptr_t>(range) + kHuge - 1) & ~(kHuge - 1);
    // NOLINTNEXTLINE(performance-no-int-to-ptr): madvise takes the region's address
    if (madvise(reinterpret_cast<void*>(region), kHuge, /*MADV_COLLAPSE=*/25) != 0)
      GTEST_SKIP() << "the kernel has no free 2 MB page now (errno " << errno << ")";
  }
  EXPECT_GE(huge_kb, 2048);
}

}  // namespace
}  // namespace gemma
