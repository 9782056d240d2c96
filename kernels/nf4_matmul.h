// Matmul against a frozen NF4 weight (qlora-formats.md §1.10): y = x · Wᵀ where W [out, in] lives
// only as its NF4 bytes. Forward dequantizes W into the compute dtype, multiplies and frees it;
// backward dequantizes it again for the input gradient (W itself never gets one). So a model's
// base costs its NF4 bytes, plus one dequantized weight as workspace while a matmul runs.
#pragma once

#include <torch/torch.h>

#include "kernels/nf4.h"

namespace gemma {

// W dequantized into `dtype` (bf16 and f32 straight from the kernels; other dtypes via f32).
torch::Tensor dequantize_nf4_as(const Nf4Weight& w, torch::ScalarType dtype);

// x [..., in] -> [..., out], differentiable in x. `w` must outlive the autograd graph (it is held
// by reference: the frozen weights belong to the model).
torch::Tensor nf4_linear(const torch::Tensor& x, const Nf4Weight& w);

}  // namespace gemma
