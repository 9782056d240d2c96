// What a run really holds at its peak, to print beside the memory plan's prediction. On CPU: the
// bytes LibTorch's CPU allocator hands out, counted by an allocator installed once in front of the
// default one (and kept for the life of the process, since tensors may outlive any run): what
// tensors hold, not RSS, which file mappings and the heap's slack blur. On CUDA: the caching
// allocator's statistics. Only bytes allocated after install() are counted.
#pragma once

#include <atomic>
#include <cstdint>

#include <c10/core/Allocator.h>
#include <torch/torch.h>

namespace gemma {

class CountingCpuAllocator final : public c10::Allocator {
 public:
  static CountingCpuAllocator& install();
  CountingCpuAllocator(const CountingCpuAllocator&) = delete;
  CountingCpuAllocator& operator=(const CountingCpuAllocator&) = delete;

  int64_t live_bytes() const { return live_.load(); }
  int64_t peak_bytes() const { return peak_.load(); }
  void reset_peak() { peak_.store(live_.load()); }

  c10::DataPtr allocate(size_t n) override;
  c10::DeleterFnPtr raw_deleter() const override;
  void copy_data(void* dest, const void* src, std::size_t count) const override;

 private:
  CountingCpuAllocator();
  static void release(void* data);

  c10::Allocator* inner_;
  c10::DeleterFnPtr inner_deleter_ = nullptr;
  std::atomic<int64_t> live_{0}, peak_{0};
};

// The peak bytes held on `device`: on CPU beyond what was live when the meter was made, on CUDA
// the caching allocator's allocated-bytes peak. restart_peak() ends one phase (loading the model,
// whose transients are its own) and returns its peak; peak_bytes() is the peak since.
class MemoryMeter {
 public:
  explicit MemoryMeter(const torch::Device& device);
  int64_t peak_bytes() const;
  int64_t restart_peak();

 private:
  torch::Device device_;
  int64_t cpu_start_ = 0;
};

}  // namespace gemma
