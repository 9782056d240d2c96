#include "kernels/bf16_matvec.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <limits>

namespace gemma {

namespace {

bool cpu_has_avx512_bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
}

const bool kHasAvx512Bf16 = cpu_has_avx512_bf16();

struct Operands {
  const uint16_t* w;  // [out, in] bf16 bits
  const uint16_t* x;  // [rows, in]
  int64_t in, out;
  float* y;  // [rows, out]
};

__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline __m512 dot32(__m512 acc,
                                                                           const uint16_t* a,
                                                                           const uint16_t* b) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(_mm512_loadu_si512(a)),
                          reinterpret_cast<__m512bh>(_mm512_loadu_si512(b)));
}

// Outputs [begin, end) for kRows rows of x: two independent sums per row, 64 weights a step, a
// last step of 32 when in % 64 == 32.
template <int kRows>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void product(const Operands& op,
                                                                    int64_t begin, int64_t end) {
  for (int64_t o = begin; o < end; ++o) {
    const uint16_t* w = op.w + o * op.in;
    __m512 s0[kRows], s1[kRows];
    for (int m = 0; m < kRows; ++m) s0[m] = s1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= op.in; k += 64) {
      for (int m = 0; m < kRows; ++m) {
        s0[m] = dot32(s0[m], w + k, op.x + m * op.in + k);
        s1[m] = dot32(s1[m], w + k + 32, op.x + m * op.in + k + 32);
      }
    }
    if (k < op.in) {
      for (int m = 0; m < kRows; ++m) s0[m] = dot32(s0[m], w + k, op.x + m * op.in + k);
    }
    for (int m = 0; m < kRows; ++m)
      op.y[m * op.out + o] = _mm512_reduce_add_ps(_mm512_add_ps(s0[m], s1[m]));
  }
}

using Product = void (*)(const Operands&, int64_t, int64_t);
constexpr Product kByRows[] = {product<1>, product<2>, product<3>, product<4>,
                               product<5>, product<6>, product<7>, product<8>};

}  // namespace

bool bf16_matvec_applies(const torch::Tensor& x, const torch::Tensor& w, int64_t max_rows) {
  if (!kHasAvx512Bf16) return false;
  if (!x.device().is_cpu() || !w.device().is_cpu()) return false;
  if (x.scalar_type() != torch::kBFloat16 || w.scalar_type() != torch::kBFloat16) return false;
  if (w.dim() != 2 || w.size(1) % 32 != 0 || x.dim() < 1 || x.size(-1) != w.size(1)) return false;
  if (torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad())) return false;
  const int64_t rows = w.size(1) == 0 ? 0 : x.numel() / w.size(1);
  return rows >= 1 && rows <= max_rows;
}

torch::Tensor bf16_matvec(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(bf16_matvec_applies(x, w, std::numeric_limits<int64_t>::max()),
              "bf16_matvec: an unsupported product (x ", x.sizes(), " ", x.scalar_type(),
              ", weight ", w.sizes(), " ", w.scalar_type(), ")");
  torch::NoGradGuard no_grad;
  const int64_t in = w.size(1), out = w.size(0), rows = x.numel() / in;
  const torch::Tensor xc = x.reshape({rows, in}).contiguous();
  const torch::Tensor wc = w.contiguous();
  torch::Tensor y = torch::empty({rows, out}, x.options().dtype(torch::kFloat32));
  const auto* wp = reinterpret_cast<const uint16_t*>(wc.data_ptr());
  const auto* xp = reinterpret_cast<const uint16_t*>(xc.data_ptr());
  float* yp = y.data_ptr<float>();
  // about 128 KB of weights a task
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / in);
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    for (int64_t first = 0; first < rows; first += 8) {
      const int64_t n = std::min<int64_t>(8, rows - first);
      const Operands op{wp, xp + first * in, in, out, yp + first * out};
      kByRows[n - 1](op, begin, end);
    }
  });
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  return y.to(torch::kBFloat16).view(shape);
}

torch::Tensor few_rows_linear(const torch::Tensor& x, const torch::Tensor& w) {
  return bf16_matvec_applies(x, w) ? bf16_matvec(x, w) : torch::nn::functional::linear(x, w);
}

}  // namespace gemma
