#include "kernels/bf16_linear.h"

#include <algorithm>

#include "kernels/nf4_matmul.h"

namespace gemma {

namespace {

bool cpu_has_bf16_products() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

const bool kCpuHasBf16Products = cpu_has_bf16_products();

// Rows of the weight widened at a time: about 16 MB of float32.
int64_t chunk_rows(int64_t in) { return std::max<int64_t>(1, (int64_t{4} << 20) / in); }

// x · wᵀ with the weight widened chunk by chunk of output rows; x already float32 [N, in].
torch::Tensor product_by_chunks(const torch::Tensor& x32, const torch::Tensor& w) {
  const int64_t out = w.size(0), step = chunk_rows(w.size(1));
  if (out <= step) return torch::nn::functional::linear(x32, w.to(torch::kFloat32));
  torch::Tensor y = torch::empty({x32.size(0), out}, x32.options());
  for (int64_t begin = 0; begin < out; begin += step) {
    const int64_t n = std::min(step, out - begin);
    y.narrow(1, begin, n)
        .copy_(torch::nn::functional::linear(x32, w.narrow(0, begin, n).to(torch::kFloat32)));
  }
  return y;
}

// grad_y [N, out] · w, the weight widened chunk by chunk and the partial products summed in
// float32.
torch::Tensor input_grad_by_chunks(const torch::Tensor& g32, const torch::Tensor& w) {
  const int64_t out = w.size(0), step = chunk_rows(w.size(1));
  if (out <= step) return torch::matmul(g32, w.to(torch::kFloat32));
  torch::Tensor grad = torch::zeros({g32.size(0), w.size(1)}, g32.options());
  for (int64_t begin = 0; begin < out; begin += step) {
    const int64_t n = std::min(step, out - begin);
    grad.addmm_(g32.narrow(1, begin, n), w.narrow(0, begin, n).to(torch::kFloat32));
  }
  return grad;
}

torch::Tensor flat(const torch::Tensor& t) {
  return t.reshape({-1, t.size(-1)}).to(torch::kFloat32);
}

std::vector<int64_t> with_last(const torch::Tensor& t, int64_t last) {
  std::vector<int64_t> shape = t.sizes().vec();
  shape.back() = last;
  return shape;
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class Bf16LinearThroughF32 : public torch::autograd::Function<Bf16LinearThroughF32> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& w) {
    ctx->save_for_backward({w});
    return product_by_chunks(flat(x), w).to(torch::kBFloat16).view(with_last(x, w.size(0)));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const torch::Tensor w = ctx->get_saved_variables()[0];
    const torch::Tensor& g = grads[0];
    return {input_grad_by_chunks(flat(g), w).to(torch::kBFloat16).view(with_last(g, w.size(1))),
            torch::Tensor()};
  }
};

// The NF4 weight's bf16 values as float32.
torch::Tensor nf4_values_f32(const Nf4Weight& w) {
  return w.dtype == torch::kBFloat16 ? dequantize_nf4_as(w, torch::kFloat32)
                                     : dequantize_nf4_as(w, torch::kBFloat16).to(torch::kFloat32);
}

}  // namespace

bool bf16_products_through_f32(const torch::Tensor& x) {
  return !kCpuHasBf16Products && x.scalar_type() == torch::kBFloat16 && x.device().is_cpu();
}

torch::Tensor bf16_linear_through_f32(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && w.scalar_type() == torch::kBFloat16 &&
                  w.dim() == 2 && x.size(-1) == w.size(1),
              "bf16_linear_through_f32: x [..., ", x.size(-1), "] ", x.scalar_type(),
              " against a weight ", w.sizes(), " ", w.scalar_type());
  TORCH_CHECK(!(torch::GradMode::is_enabled() && w.requires_grad()),
              "bf16_linear_through_f32: the weight must be frozen");
  return Bf16LinearThroughF32::apply(x, w);
}

torch::Tensor nf4_bf16_linear_through_f32(const torch::Tensor& x, const Nf4Weight& w) {
  return torch::nn::functional::linear(flat(x), nf4_values_f32(w))
      .to(torch::kBFloat16)
      .view(with_last(x, w.shape[0]));
}

torch::Tensor nf4_bf16_input_grad_through_f32(const torch::Tensor& grad_y, const Nf4Weight& w) {
  return torch::matmul(flat(grad_y), nf4_values_f32(w))
      .to(torch::kBFloat16)
      .view(with_last(grad_y, w.shape[1]));
}

}  // namespace gemma
