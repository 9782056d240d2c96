#include "model/rms_norm.h"

#include "kernels/rms_norm_cpu.h"

namespace gemma {

torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  // float32 for bf16/f16/f32 inputs; f64 stays f64 (the finite-difference tests run in f64).
  const torch::Tensor xf = x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
  // pow(-0.5) rather than rsqrt, as transformers does to mirror the JAX reference's numerics.
  torch::Tensor y = xf * torch::pow(xf.pow(2).mean(-1, /*keepdim=*/true) + eps, -0.5);
  if (weight.defined()) y = y * weight.to(y.scalar_type());
  return y.to(x.scalar_type());
}

RmsNormImpl::RmsNormImpl(const RmsNormOptions& options_) : options(options_) {
  if (options.with_scale()) weight = register_parameter("weight", torch::ones({options.dim()}));
}

torch::Tensor RmsNormImpl::forward(const torch::Tensor& x) {
  if (rms_norm_cpu_applies(x)) return rms_norm_cpu(x, weight, options.eps());
  return rms_norm_reference(x, weight, options.eps());
}

}  // namespace gemma
