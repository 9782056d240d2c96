#include "kernels/bf16_matvec.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>

#include "kernels/bf16_linear.h"
#include "kernels/rows_product.h"

namespace gemma {

bool bf16_matvec_applies(const torch::Tensor& x, const torch::Tensor& w, int64_t max_rows) {
  if (!best_rows_code(/*bf16_activations=*/true)) return false;
  if (!x.device().is_cpu() || !w.device().is_cpu()) return false;
  if (x.scalar_type() != torch::kBFloat16 || w.scalar_type() != torch::kBFloat16) return false;
  if (w.dim() != 2 || w.size(1) == 0 || x.dim() < 1 || x.size(-1) != w.size(1)) return false;
  if (torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad())) return false;
  const int64_t rows = x.numel() / w.size(1);
  return rows >= 1 && rows <= max_rows;
}

torch::Tensor bf16_matvec(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(bf16_matvec_applies(x, w, std::numeric_limits<int64_t>::max()),
              "bf16_matvec: an unsupported product (x ", x.sizes(), " ", x.scalar_type(),
              ", weight ", w.sizes(), " ", w.scalar_type(), ")");
  torch::NoGradGuard no_grad;
  const RowsCode code = *best_rows_code(/*bf16_activations=*/true);
  const int64_t in = w.size(1), out = w.size(0), rows = x.numel() / in;
  const torch::Tensor wc = w.contiguous();
  // the AVX512_BF16 code reads x as bf16, the AVX2 code as float32
  const bool bf16_pairs = code == RowsCode::kAvx512Bf16 && in % 32 == 0;
  const torch::Tensor xc =
      x.reshape({rows, in}).to(bf16_pairs ? torch::kBFloat16 : torch::kFloat32).contiguous();
  RowsInput input;
  RowsInputBuffer forms;
  if (bf16_pairs) {
    input.rows = rows;
    input.in = in;
    input.bf16 = reinterpret_cast<const uint16_t*>(xc.data_ptr());
  } else {
    input = forms.prepare(xc.data_ptr<float>(), rows, in, RowsCode::kAvx2);
  }
  torch::Tensor y = torch::empty({rows, out}, x.options().dtype(torch::kFloat32));
  const auto* wp = reinterpret_cast<const uint16_t*>(wc.data_ptr());
  float* yp = y.data_ptr<float>();
  // about 128 KB of weights a task
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / in);
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    bf16_rows_product(wp, in, out, input, code, yp, begin, end);
  });
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  return y.to(torch::kBFloat16).view(shape);
}

torch::Tensor few_rows_linear(const torch::Tensor& x, const torch::Tensor& w) {
  if (bf16_matvec_applies(x, w)) return bf16_matvec(x, w);
  // more rows on a CPU without bf16 instructions: float32 products (bf16_linear.h)
  if (bf16_products_through_f32(x) && w.scalar_type() == torch::kBFloat16 && w.dim() == 2 &&
      !(torch::GradMode::is_enabled() && w.requires_grad()))
    return bf16_linear_through_f32(x, w);
  return torch::nn::functional::linear(x, w);
}

}  // namespace gemma
