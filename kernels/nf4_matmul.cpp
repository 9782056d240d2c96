#include "kernels/nf4_matmul.h"

#include "kernels/bf16_linear.h"
#include "kernels/nf4_fused_matmul.h"

namespace gemma {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class Nf4LinearFunction : public torch::autograd::Function<Nf4LinearFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const Nf4Weight* w) {
    ctx->saved_data["weight"] = reinterpret_cast<int64_t>(w);
    if (bf16_products_through_f32(x)) return nf4_bf16_linear_through_f32(x, *w);
    return torch::nn::functional::linear(x, dequantize_nf4_as(*w, x.scalar_type()));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The weight travels as an integer: saved_data holds IValues only.
    const auto* w = reinterpret_cast<const Nf4Weight*>(  // NOLINT(performance-no-int-to-ptr)
        ctx->saved_data["weight"].toInt());
    return {nf4_linear_input_grad(grads[0], *w), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor dequantize_nf4_as(const Nf4Weight& w, torch::ScalarType dtype) {
  // As bitsandbytes: dequantize into the dtype the weight was quantized from, then cast. (A bf16
  // weight computed in f32 thus sees bf16-rounded values, exactly as bitsandbytes computes it.)
  const bool fast_cpu =
      w.packed.device().is_cpu() && (w.dtype == torch::kBFloat16 || w.dtype == torch::kFloat32);
  const torch::Tensor out = fast_cpu ? dequantize_nf4_cpu(w, dtype) : dequantize_nf4(w);
  return out.scalar_type() == dtype ? out : out.to(dtype);
}

torch::Tensor nf4_linear_input_grad(const torch::Tensor& grad_y, const Nf4Weight& w) {
  if (bf16_products_through_f32(grad_y)) return nf4_bf16_input_grad_through_f32(grad_y, w);
  return torch::matmul(grad_y, dequantize_nf4_as(w, grad_y.scalar_type()));
}

torch::Tensor nf4_linear(const torch::Tensor& x, const Nf4Weight& w) {
  TORCH_CHECK(w.shape.size() == 2 && x.size(-1) == w.shape[1], "nf4_linear: x [..., ", x.size(-1),
              "] against a weight of ", w.shape.size(), " dims");
  if (!x.requires_grad() || !torch::GradMode::is_enabled()) {
    torch::NoGradGuard no_grad;
    // a few rows (decoding): the weight dequantized in registers, never as a dense tensor
    if (nf4_fused_matmul_applies(x, w)) return nf4_fused_matmul(x, w);
    if (bf16_products_through_f32(x)) return nf4_bf16_linear_through_f32(x, w);
    return torch::nn::functional::linear(x, dequantize_nf4_as(w, x.scalar_type()));
  }
  return Nf4LinearFunction::apply(x, &w);
}

}  // namespace gemma
