// Paged optimizer state on CPU (PagedAdamW, PagedAdamW8bit): large state tensors live in a
// shared mapping of an unlinked temporary file instead of anonymous memory, so under memory
// pressure the kernel writes them back to that file rather than to swap, and they vanish with
// the process. bitsandbytes pages with CUDA managed memory instead (qlora-formats.md §2.4); the
// bytes of the state are the same either way.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace gemma {

// bitsandbytes pages only state1/state2 of tensors with at least this many elements.
constexpr int64_t kPagedMinElements = 100000;

// A zero-filled CPU tensor backed by a fresh unlinked file in the temporary directory ($TMPDIR).
torch::Tensor paged_zeros(torch::IntArrayRef shape, torch::ScalarType dtype);

// State for `param`: paged_zeros when `paged`, `param` is on the CPU and has at least
// kPagedMinElements elements; ordinary zeros on its device otherwise.
torch::Tensor state_zeros(const torch::Tensor& param, torch::ScalarType dtype, bool paged);

}  // namespace gemma
