// Matmul against a frozen NF4 weight (qlora-formats.md §1.10): y = x · Wᵀ where W [out, in] lives
// only as its NF4 bytes. Forward dequantizes W into the compute dtype, multiplies and frees it;
// backward dequantizes it again for the input gradient (W itself never gets one). So a model's
// base costs its NF4 bytes, plus one dequantized weight as workspace while a matmul runs.
#pragma once

#include <torch/torch.h>

#include "kernels/nf4.h"

namespace gemma {

// W dequantized as bitsandbytes does (into the dtype it was quantized from), then cast to `dtype`.
torch::Tensor dequantize_nf4_as(const Nf4Weight& w, torch::ScalarType dtype);

// x [..., in] -> [..., out], differentiable in x; the same kernel as a dense Linear, so an NF4 base
// computes bit for bit what its dequantized weights compute as dense tensors. Without gradients
// and with at most kNf4FusedMaxRows rows (decoding) it takes nf4_fused_matmul instead: the same
// products to float32 rounding, without writing the dense weight. `w` must outlive the
// autograd graph (it is held by reference: the frozen weights belong to the model).
torch::Tensor nf4_linear(const torch::Tensor& x, const Nf4Weight& w);
// grad_y [..., out] · W: the input gradient nf4_linear's backward computes.
torch::Tensor nf4_linear_input_grad(const torch::Tensor& grad_y, const Nf4Weight& w);

}  // namespace gemma
