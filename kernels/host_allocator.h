// Large host tensors from glibc's heap instead of fresh mmaps. By default glibc maps every block
// over 32 MB afresh and unmaps it when freed, so each 64 MB dequantized weight or activation of a
// training step pays ~16,000 page faults (36 ms per 64 MB on a 2-core VM, six times the
// dequantization itself: bench/nf4_bench's BM_DequantizeCpu against BM_DequantizeCpuInto). Kept in
// the heap, freed blocks are reused at once. Resident memory then stays near the run's peak
// instead of falling back between steps; the peak itself is unchanged.
// Blocks of 2 MB and more are also put on transparent huge pages (LibTorch's CPU allocator does
// this when THP_MEM_ALLOC_ENABLE=1, which is set here unless the environment says otherwise):
// decoding streams every weight once a token, and with 4 KB pages each 4 KB of it costs a TLB
// miss (bench/compare_llama_cpp.sh: about 5% on bf16 decoding).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace gemma {

// Call first thing in main(), before the first allocation worth keeping. Idempotent.
void keep_large_host_allocations();

// Moves the pages under [data, data + bytes) onto 2 MB pages now (Linux 6.1's MADV_COLLAPSE, a
// copy of ~10 ms per 100 MB). For weights that decoding streams every token: tensors under 2 MB
// and the ends of larger ones stay on 4 KB pages otherwise (the transparent huge pages above
// start at 2 MB-aligned blocks), a third of bench-100m's decoder weights. Each 2 MB region
// around the range is collapsed whole (its neighbours' bytes are unchanged); best effort: a
// kernel without it, or a region that cannot be collapsed, keeps its pages.
void collapse_into_huge_pages(const void* data, size_t bytes);

// The kernel's estimate of the memory available to new allocations without swapping
// (MemAvailable in /proc/meminfo), in bytes; unset where it cannot be read.
std::optional<int64_t> available_host_memory();

}  // namespace gemma
