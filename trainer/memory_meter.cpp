#include "trainer/memory_meter.h"

#include <c10/core/CPUAllocator.h>

#ifdef GEMMA_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace gemma {

// What the counting DataPtr owns: the inner allocation and the size it was counted with.
struct CountingCpuAllocator::Block {
  c10::DataPtr inner;
  int64_t size;
  CountingCpuAllocator* owner;
};

CountingCpuAllocator::CountingCpuAllocator() : inner_(c10::GetCPUAllocator()) {}

CountingCpuAllocator& CountingCpuAllocator::install() {
  static CountingCpuAllocator* const instance = [] {
    auto* a = new CountingCpuAllocator();  // never freed: live blocks point at it
    c10::SetCPUAllocator(a, /*priority=*/100);
    return a;
  }();
  return *instance;
}

c10::DataPtr CountingCpuAllocator::allocate(size_t n) {
  auto* block = new Block{inner_->allocate(n), static_cast<int64_t>(n), this};
  const int64_t live = live_.fetch_add(block->size) + block->size;
  int64_t peak = peak_.load();
  while (live > peak && !peak_.compare_exchange_weak(peak, live)) {
  }
  void* data = block->inner.get();
  return {data, block, &CountingCpuAllocator::release, c10::Device(c10::DeviceType::CPU)};
}

void CountingCpuAllocator::release(void* p) {
  auto* block = static_cast<Block*>(p);
  block->owner->live_.fetch_sub(block->size);
  delete block;
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
