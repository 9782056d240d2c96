// Counts the bytes LibTorch holds through its CPU allocator: installed once in front of the default
// allocator (and kept for the life of the process, since tensors may outlive any test), it records
// live bytes and their peak, so memory tests measure what tensors really hold, not RSS, which file
// mappings blur. Only bytes allocated after install() are counted.
#pragma once

#include <atomic>
#include <cstdint>

#include <c10/core/Allocator.h>

namespace gemma::testing {

class CountingCpuAllocator final : public c10::Allocator {
 public:
  static CountingCpuAllocator& install();
  CountingCpuAllocator(const CountingCpuAllocator&) = delete;
  CountingCpuAllocator& operator=(const CountingCpuAllocator&) = delete;

  int64_t live_bytes() const { return live_.load(); }
  int64_t peak_bytes() const { return peak_.load(); }
  void reset_peak() { peak_.store(live_.load()); }

  c10::DataPtr allocate(size_t n) override;
  void copy_data(void* dest, const void* src, std::size_t count) const override;

 private:
  CountingCpuAllocator();
  struct Block;
  static void release(void* block);

  c10::Allocator* inner_;
  std::atomic<int64_t> live_{0}, peak_{0};
};

}  // namespace gemma::testing
