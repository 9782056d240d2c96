// The counting CPU allocator behind MemoryMeter: tensors and raw allocations (oneDNN takes its
// scratch through Allocator::raw_allocate, e.g. for bf16 matmuls where the CPU has AVX512_BF16)
// are counted while held and uncounted when freed, and the peak is kept.
#include "trainer/memory_meter.h"

#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>

namespace gemma {
namespace {

TEST(MemoryMeter, CountsTensorsAndRawAllocations) {
  CountingCpuAllocator& counter = CountingCpuAllocator::install();
  ASSERT_EQ(c10::GetCPUAllocator(), &counter);
  const int64_t before = counter.live_bytes();
  counter.reset_peak();
  {
    const torch::Tensor t = torch::empty({1000}, torch::kFloat32);
    EXPECT_EQ(counter.live_bytes() - before, 4000);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % 64, 0u);  // LibTorch's alignment
    void* raw = counter.raw_allocate(12345);
    ASSERT_NE(raw, nullptr);
    static_cast<char*>(raw)[12344] = 1;
    EXPECT_EQ(counter.live_bytes() - before, 4000 + 12345);
    counter.raw_deleter()(raw);
    EXPECT_EQ(counter.live_bytes() - before, 4000);
  }
  EXPECT_EQ(counter.live_bytes(), before);
  EXPECT_EQ(counter.peak_bytes() - before, 4000 + 12345);
  // A bf16 matmul goes through whichever BLAS this CPU has (oneDNN's raw allocations included).
  const torch::Tensor a = torch::randn({64, 96}).to(torch::kBFloat16);
  const torch::Tensor b = torch::randn({96, 80}).to(torch::kBFloat16);
  const torch::Tensor product = torch::matmul(a, b).to(torch::kFloat32);
  EXPECT_TRUE(torch::allclose(product, torch::matmul(a.to(torch::kFloat32), b.to(torch::kFloat32)),
                              0.02, 0.1));
}

}  // namespace
}  // namespace gemma
