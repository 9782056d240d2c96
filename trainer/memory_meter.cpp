#include "trainer/memory_meter.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/alignment.h>

#ifdef GEMMA_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace gemma {

namespace {

// Each block carries its counted size in a header of one alignment unit in front of the data, so
// that the DataPtr's context is its data pointer: Allocator::raw_allocate (oneDNN's scratch
// buffers, e.g. for bf16 matmuls on CPUs with AVX512_BF16) requires that.
constexpr size_t kHeader = c10::gAlignment;

struct Header {
  int64_t size;
};

CountingCpuAllocator* g_counter = nullptr;  // the one instance; never freed

}  // namespace

CountingCpuAllocator::CountingCpuAllocator() : inner_(c10::GetCPUAllocator()) {
  inner_deleter_ = inner_->raw_deleter();
  TORCH_CHECK(inner_deleter_ != nullptr,
              "the CPU allocator in place has no raw deleter; cannot count in front of it");
}

CountingCpuAllocator& CountingCpuAllocator::install() {
  static CountingCpuAllocator* const instance = [] {
    auto* a = new CountingCpuAllocator();  // never freed: live blocks point at it
    g_counter = a;
    c10::SetCPUAllocator(a, /*priority=*/100);
    return a;
  }();
  return *instance;
}

c10::DataPtr CountingCpuAllocator::allocate(size_t n) {
  auto* base = static_cast<char*>(inner_->raw_allocate(n + kHeader));
  reinterpret_cast<Header*>(base)->size = static_cast<int64_t>(n);
  const int64_t live = live_.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
  int64_t peak = peak_.load();
  while (live > peak && !peak_.compare_exchange_weak(peak, live)) {
  }
  void* data = base + kHeader;
  return {data, data, &CountingCpuAllocator::release, c10::Device(c10::DeviceType::CPU)};
}

c10::DeleterFnPtr CountingCpuAllocator::raw_deleter() const {
  return &CountingCpuAllocator::release;
}

void CountingCpuAllocator::release(void* data) {
  if (data == nullptr) return;
  char* base = static_cast<char*>(data) - kHeader;
  g_counter->live_.fetch_sub(reinterpret_cast<Header*>(base)->size);
  g_counter->inner_deleter_(base);
}

void CountingCpuAllocator::copy_data(void* dest, const void* src, std::size_t count) const {
  default_copy_data(dest, src, count);
}

MemoryMeter::MemoryMeter(const torch::Device& device) : device_(device) {
  if (device.is_cuda()) {
#ifdef GEMMA_WITH_CUDA
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
#endif
    return;
  }
  CountingCpuAllocator& counter = CountingCpuAllocator::install();
  cpu_start_ = counter.live_bytes();
  counter.reset_peak();
}

int64_t MemoryMeter::peak_bytes() const {
  if (device_.is_cuda()) {
#ifdef GEMMA_WITH_CUDA
    const auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(device_.has_index() ? device_.index() : 0);
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
        .peak;
#else
    return 0;
#endif
  }
  return CountingCpuAllocator::install().peak_bytes() - cpu_start_;
}

int64_t MemoryMeter::restart_peak() {
  const int64_t peak = peak_bytes();
  if (device_.is_cuda()) {
#ifdef GEMMA_WITH_CUDA
    c10::cuda::CUDACachingAllocator::resetPeakStats(device_.has_index() ? device_.index() : 0);
#endif
  } else {
    CountingCpuAllocator::install().reset_peak();
  }
  return peak;
}

}  // namespace gemma
