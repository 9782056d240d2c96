// RmsNorm: Gemma 4's RMSNorm, y = x · (mean(x²) + eps)^(-1/2) · w, computed in float32 and cast
// back (gemma4-architecture.md §2.1). The weight multiplies directly (not 1 + w as in Gemma 1-3);
// `with_scale = false` gives the weightless form used for V and the MoE router. On the CPU,
// float32 and bf16 inputs take one-pass kernels (kernels/rms_norm_cpu.h); the LibTorch ops below
// are the reference they are tested against, and the path of every other device and dtype.
#pragma once

#include <torch/torch.h>

namespace gemma {

struct RmsNormOptions {
  RmsNormOptions(int64_t dim) : dim_(dim) {}  // NOLINT(google-explicit-constructor)
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(double, eps) = 1e-6;
  TORCH_ARG(bool, with_scale) = true;
};

// x · (mean(x²) + eps)^(-1/2) · weight (undefined: no weight) as LibTorch ops.
torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& weight, double eps);

class RmsNormImpl : public torch::nn::Module {
 public:
  explicit RmsNormImpl(const RmsNormOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

  RmsNormOptions options;
  torch::Tensor weight;  // [dim], absent when !with_scale
};
TORCH_MODULE(RmsNorm);

}  // namespace gemma
