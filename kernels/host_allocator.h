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

namespace gemma {

// Call first thing in main(), before the first allocation worth keeping. Idempotent.
void keep_large_host_allocations();

}  // namespace gemma
