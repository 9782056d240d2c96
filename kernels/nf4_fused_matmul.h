// y = x · Wᵀ for a few rows of x against an NF4 weight, with each 64-element block dequantized
// into registers and used at once: the dense weight is never written (CPU here, CUDA in
// nf4_fused_matmul_cuda.cu). This is the product that
// decoding (one row per sequence) and short prompts need; it reads the weight's 4-bit bytes once
// instead of writing and reading a dense copy. Larger batches go through dequantize + BLAS
// (nf4_linear), where the matmul dominates.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "kernels/nf4.h"
#include "kernels/rows_product.h"

namespace gemma {

// Rows of x up to which nf4_linear takes the fused product. It is faster well beyond this
// (bench/nf4_bench's BM_Rows*: 4x dequantize + matmul at 32 rows); 8 keeps decoding and tiny
// batches on it, while prompts and training steps compute exactly what the dequantized dense
// weights compute.
constexpr int64_t kNf4FusedMaxRows = 8;

// Whether nf4_fused_matmul handles this product: x and the weight on one device, either the CPU
// with AVX2 (AVX-512 where present) or a CUDA GPU with gemma-train's kernels built in; a 2-d
// weight of f32 or bf16 whose rows are whole blocks (in % 64 == 0), x of f32 or bf16 with at most
// `max_rows` rows.
bool nf4_fused_matmul_applies(const torch::Tensor& x, const Nf4Weight& w,
                              int64_t max_rows = kNf4FusedMaxRows);

// x [..., in] -> [..., out] in x's dtype, no autograd; any number of rows. The weight takes the
// values dequantize_nf4_as(w, x.dtype) gives (bf16-rounded for a bf16 weight, and for any weight
// multiplied with bf16 x); products accumulate in float32, so the result equals
// linear(x, dequantize_nf4_as(w, x.dtype)) to float32 rounding.
// `isa` picks the CPU code for tests and benchmarks ("avx2", "avx512" or "avx512_bf16", which must
// run here); null: the best this CPU has for x's dtype.
torch::Tensor nf4_fused_matmul(const torch::Tensor& x, const Nf4Weight& w,
                               const char* isa = nullptr);
// The CPU codes this CPU runs, slowest first: a prefix of {"avx2", "avx512", "avx512_bf16"}.
std::vector<std::string> nf4_fused_matmul_cpu_isas();

// `w` as rows_product reads it (kernels/rows_product.h); the float32 copies of its tables are
// appended to `keep_alive`, which must outlive the view. `bf16_compute`: block values rounded to
// bf16 even for an f32 weight (as dequantize_nf4_as(w, bf16) rounds them).
Nf4RowsWeight nf4_rows_weight(const Nf4Weight& w, bool bf16_compute,
                              std::vector<torch::Tensor>* keep_alive);

// The block tables of a weight with bf16 values (Nf4RowsWeight::block_tables), uint8 [blocks, 32]:
// each block's values lut[code] · absmax rounded to bf16, as the AVX2 code computes them, split
// into low and high bytes. Half a byte per weight more: for decoding, where computing them for
// every block of every token is most of the AVX2 code's work (one row against 4096x4096 at 2
// threads on an AVX2-only EPYC, bench/nf4_bench's BM_RowsProductAvx2Tables: 0.46-0.57 ms with
// them, 1.00-1.06 ms without).
torch::Tensor nf4_block_tables(const Nf4RowsWeight& w, int64_t blocks);

}  // namespace gemma
