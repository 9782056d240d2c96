// CUDA unified ("managed") memory for paged optimizer state, as bitsandbytes' paged optimizers
// allocate it (qlora-formats.md §2.4): the driver migrates its pages between host and device on
// demand, so under memory pressure the state waits in host RAM instead of failing the step. Plain
// pointers and a raw stream, so callers need no CUDA headers.
#pragma once

#include <cstddef>

namespace gemma::cuda {

// cudaMallocManaged(bytes, cudaMemAttachHost), zero-filled from the host. Throws
// std::runtime_error with CUDA's message when the allocation fails.
void* managed_alloc_zeroed(size_t bytes);
void managed_free(void* ptr);

// Whether `ptr` points into managed memory.
bool is_managed(const void* ptr);

// Starts migrating `bytes` at `ptr` to `device` on `stream` (cudaMemPrefetchAsync), when the
// device supports concurrent managed access; a no-op otherwise, as in bitsandbytes.
void managed_prefetch(const void* ptr, size_t bytes, int device, void* stream);

}  // namespace gemma::cuda
