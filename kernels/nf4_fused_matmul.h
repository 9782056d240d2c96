// y = x · Wᵀ for a few rows of x against an NF4 weight, with each 64-element block dequantized
// into registers and used at once: the dense weight is never written. This is the product that
// decoding (one row per sequence) and short prompts need; it reads the weight's 4-bit bytes once
// instead of writing and reading a dense copy. Larger batches go through dequantize + BLAS
// (nf4_linear), where the matmul dominates.
#pragma once

#include <torch/torch.h>

#include "kernels/nf4.h"

namespace gemma {

// Rows of x up to which nf4_linear takes the fused product. It is faster well beyond this
// (bench/nf4_bench's BM_Rows*: 4x dequantize + matmul at 32 rows); 8 keeps decoding and tiny
// batches on it, while prompts and training steps compute exactly what the dequantized dense
// weights compute.
constexpr int64_t kNf4FusedMaxRows = 8;

// Whether nf4_fused_matmul handles this product: CPU tensors, an AVX2 CPU, a 2-d weight of f32 or
// bf16 whose rows are whole blocks (in % 64 == 0), x of f32 or bf16 with at most `max_rows` rows.
bool nf4_fused_matmul_applies(const torch::Tensor& x, const Nf4Weight& w,
                              int64_t max_rows = kNf4FusedMaxRows);

// x [..., in] -> [..., out] in x's dtype, no autograd; any number of rows. The weight takes the
// values dequantization gives (bf16-rounded for a bf16 weight); products accumulate in float32, so
// the result equals linear(x, dequantize_nf4_as(w, x.dtype)) to float32 rounding.
torch::Tensor nf4_fused_matmul(const torch::Tensor& x, const Nf4Weight& w);

}  // namespace gemma
