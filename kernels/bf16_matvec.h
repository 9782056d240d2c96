// y = x · Wᵀ for a few rows of bf16 x against a dense bf16 weight, straight from the weight's
// bytes, so a decoded token reads each weight once at close to memory bandwidth (LibTorch's one-row
// bf16 product on small matrices, such as a decoder's 768-wide projections and the tied lm_head,
// runs at a fraction of it, and on CPUs without AVX512_BF16 at a fifth of its float32 product).
// With AVX512_BF16 `vdpbf16ps` multiplies 32 bf16 pairs at once; with AVX2 the weights are
// widened to float32 (exact) and multiplied with FMA. Anything else goes to
// torch::nn::functional::linear.
#pragma once

#include <torch/torch.h>

namespace gemma {

// Rows of x up to which few_rows_linear takes the kernel (decoding, tiny batches).
constexpr int64_t kBf16MatvecMaxRows = 8;

// Whether bf16_matvec handles this product: a CPU with AVX2 + FMA, x and w bf16 on the CPU, w 2-d
// [out, in], x [..., in] with 1..max_rows rows, and no gradient to record.
bool bf16_matvec_applies(const torch::Tensor& x, const torch::Tensor& w,
                         int64_t max_rows = kBf16MatvecMaxRows);

// x [..., in] · w [out, in]ᵀ -> [..., out] bf16, float32 sums rounded once, so it equals
// linear(x, w) to float32 rounding (bf16 products are exact in float32; AVX512_BF16 treats bf16
// denormals as zero).
torch::Tensor bf16_matvec(const torch::Tensor& x, const torch::Tensor& w);

// linear(x, w) (no bias), through bf16_matvec where it applies, through bf16_linear_through_f32
// for more rows of bf16 on a CPU without bf16 instructions (bf16_linear.h).
torch::Tensor few_rows_linear(const torch::Tensor& x, const torch::Tensor& w);

}  // namespace gemma
