// RMSNorm on the CPU in one pass over the rows forward and one backward. Written as LibTorch ops
// (model/rms_norm.cpp's reference) a norm is about ten passes over its input in a training step:
// the square, the mean, the two products, the cast, and as many again in backward, with a float32
// copy of a bf16 input kept for backward. Gemma 4 runs seven norms a layer, twice with
// checkpointing. Here each row's mean square, scale and output are one pass, and backward one
// more; a bf16 input is kept as it is, with one float32 scale per row.
// The same arithmetic as the reference in float32: y = (x · r) · w with r = 1 / sqrt(mean(x²) +
// eps), rounded as the reference rounds each product; only the order of the mean's sum differs.
#pragma once

#include <torch/torch.h>

namespace gemma {

// Whether rms_norm_cpu computes this input: float32 or bf16 on the CPU.
bool rms_norm_cpu_applies(const torch::Tensor& x);

// x [..., dim] normalised over its last dimension and scaled by `weight` [dim] (float32 or the
// input's dtype; undefined: no scale), in x's dtype. Differentiable in x and in weight.
torch::Tensor rms_norm_cpu(const torch::Tensor& x, const torch::Tensor& weight, double eps);

}  // namespace gemma
