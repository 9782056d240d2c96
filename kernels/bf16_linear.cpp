#include "kernels/bf16_linear.h"

#include <ATen/Parallel.h>

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

// t (float32, contiguous) rounded to bf16 values in place, ties to even, as .to(bf16) rounds.
void round_to_bf16_values_(torch::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
              "round_to_bf16_values_: a contiguous float32 tensor");
  auto* bits = reinterpret_cast<uint32_t*>(t.data_ptr<float>());
  at::parallel_for(0, t.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t b = bits[i];
      const bool nan = (b & 0x7fffffffu) > 0x7f800000u;
      bits[i] =
          nan ? (b | 0x00400000u) & 0xffff0000u : (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
    }
  });
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
    return {bf16_input_grad_through_f32(grads[0], ctx->get_saved_variables()[0]), torch::Tensor()};
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

torch::Tensor bf16_input_grad_through_f32(const torch::Tensor& grad_y, const torch::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && grad_y.size(-1) == w.size(0),
              "bf16_input_grad_through_f32: grad [..., ", grad_y.size(-1), "] against a weight ",
              w.sizes());
  torch::NoGradGuard no_grad;
  return input_grad_by_chunks(flat(grad_y), w)
      .to(torch::kBFloat16)
      .view(with_last(grad_y, w.size(1)));
}

torch::Tensor bf16_logits_through_f32(const torch::Tensor& h, const torch::Tensor& w) {
  TORCH_CHECK(
      h.dim() == 2 && w.dim() == 2 && h.size(1) == w.size(1) && w.scalar_type() == torch::kBFloat16,
      "bf16_logits_through_f32: h ", h.sizes(), " against a bf16 weight ", w.sizes());
  torch::NoGradGuard no_grad;
  torch::Tensor y = product_by_chunks(h.to(torch::kFloat32), w);
  round_to_bf16_values_(y);
  return y;
}

torch::Tensor bf16_input_grad_from_f32(torch::Tensor grad_y, const torch::Tensor& w) {
  TORCH_CHECK(grad_y.dim() == 2 && grad_y.scalar_type() == torch::kFloat32 &&
                  grad_y.is_contiguous() && grad_y.size(1) == w.size(0),
              "bf16_input_grad_from_f32: a contiguous float32 grad [N, ", w.size(0), "]");
  torch::NoGradGuard no_grad;
  round_to_bf16_values_(grad_y);
  return input_grad_by_chunks(grad_y, w).to(torch::kBFloat16);
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
