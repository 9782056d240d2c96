// Paged optimizer state (PagedAdamW, PagedAdamW8bit). On a GPU, large state tensors live in CUDA
// managed memory, as bitsandbytes allocates them (qlora-formats.md §2.4): the driver moves their
// pages to host RAM when the GPU runs short and back when the update prefetches them. On the CPU
// they live in a shared mapping of an unlinked temporary file instead of anonymous memory, so
// under memory pressure the kernel writes them back to that file rather than to swap, and they
// vanish with the process. The bytes of the state are the same either way.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace gemma {

// bitsandbytes pages only state1/state2 of tensors with at least this many elements.
constexpr int64_t kPagedMinElements = 100000;

// A zero-filled CPU tensor backed by a fresh unlinked file in the temporary directory ($TMPDIR).
torch::Tensor paged_zeros(torch::IntArrayRef shape, torch::ScalarType dtype);

// A zero-filled tensor on CUDA `device` in managed memory (cudaMallocManaged); its deleter frees
// it. Throws when gemma-train was built without its CUDA kernels.
torch::Tensor managed_zeros(torch::IntArrayRef shape, torch::ScalarType dtype,
                            const torch::Device& device);

// State for `param`: when `paged` and `param` has at least kPagedMinElements elements,
// managed_zeros for a CUDA parameter and paged_zeros for a CPU one; ordinary zeros on its device
// otherwise.
torch::Tensor state_zeros(const torch::Tensor& param, torch::ScalarType dtype, bool paged);

// Before an update: starts moving a managed state tensor to its GPU on the current stream (a
// no-op for any other tensor, and where the device lacks concurrent managed access).
void prefetch_state(const torch::Tensor& state);

}  // namespace gemma
