// bf16 products on CPUs without bf16 instructions, run as float32 products. There LibTorch's bf16
// matmul takes about 5x its float32 one (it widens the operands block by block and runs a
// slower kernel), so a bf16 prompt or training step would be slower than a float32 one. bf16
// values are exact in float32 and LibTorch's bf16 matmul accumulates in float32 and rounds the
// result once, so widening both operands, multiplying in float32 and rounding the result is the
// same computation up to the order of the sums. The weight is widened in chunks of rows, so the
// float32 copy in flight stays small.
#pragma once

#include <torch/torch.h>

#include "kernels/nf4.h"

namespace gemma {

// Whether bf16 products of `x` go through float32 here: x is bf16 on a CPU without AVX512_BF16.
bool bf16_products_through_f32(const torch::Tensor& x);

// linear(x, w) for bf16 x [..., in] and a bf16 weight [out, in] that needs no gradient, through
// float32; differentiable in x (the input gradient is the float32 product, rounded likewise).
torch::Tensor bf16_linear_through_f32(const torch::Tensor& x, const torch::Tensor& w);

// grad_y [..., out] · w for bf16 grad_y and a bf16 weight [out, in], through float32, without
// autograd: the input gradient of bf16_linear_through_f32 (and of a frozen lm_head).
torch::Tensor bf16_input_grad_through_f32(const torch::Tensor& grad_y, const torch::Tensor& w);

// The lm_head's two products in a bf16 training step, from and to float32 buffers, so that no bf16
// copy of a [tokens, vocab] tensor is made: h [N, in] · wᵀ as float32 holding bf16 values (what
// linear(h, w).to(float32) holds), and grad_y [N, out] · w for a float32 grad_y that is first
// rounded to bf16 values in place (what grad_y.to(bf16) · w computes), as bf16.
torch::Tensor bf16_logits_through_f32(const torch::Tensor& h, const torch::Tensor& w);
torch::Tensor bf16_input_grad_from_f32(torch::Tensor grad_y, const torch::Tensor& w);

// x [..., in] · Wᵀ for bf16 x and an NF4 weight dequantized to the values it has in bf16 (as
// dequantize_nf4_as(w, bf16) gives them), in float32, without autograd; and the input gradient
// grad_y [..., out] · W likewise.
torch::Tensor nf4_bf16_linear_through_f32(const torch::Tensor& x, const Nf4Weight& w);
torch::Tensor nf4_bf16_input_grad_through_f32(const torch::Tensor& grad_y, const Nf4Weight& w);

}  // namespace gemma
