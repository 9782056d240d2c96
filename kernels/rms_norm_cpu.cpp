#include "kernels/rms_norm_cpu.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/bf16_bits.h"

namespace gemma {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int kLanes = 16;  // independent partial sums, so the compiler can vectorize them

inline void store(float* p, float v) { *p = v; }
inline void store(uint16_t* p, float v) { *p = bf16::from_float(v); }

// Σ a[i]·b[i] over n elements, in kLanes partial sums added at the end.
template <typename A, typename B>
float dot(const A* a, const B* b, int64_t n) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += bf16::load(a + i + l) * bf16::load(b + i + l);
  for (int l = 0; i < n; ++i, ++l) lanes[l] += bf16::load(a + i) * bf16::load(b + i);
  float sum = 0;
  for (const float v : lanes) sum += v;
  return sum;
}

// y rows and the per-row scale r = 1 / sqrt(mean(x²) + eps).
template <typename T>
void forward_rows(const T* x, const float* w, T* y, float* rstd, int64_t rows, int64_t dim,
                  float eps) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / dim), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* xr = x + row * dim;
      T* yr = y + row * dim;
      const float mean = dot(xr, xr, dim) / static_cast<float>(dim);
      const float r = 1.0f / std::sqrt(mean + eps);
      rstd[row] = r;
      if (w != nullptr) {
        for (int64_t j = 0; j < dim; ++j) store(yr + j, (bf16::load(xr + j) * r) * w[j]);
      } else {
        for (int64_t j = 0; j < dim; ++j) store(yr + j, bf16::load(xr + j) * r);
      }
    }
  });
}

// dx = r·(g·w) − x · r³ · Σ(g·w·x) / dim for each row; with `dw`, Σ over rows of g · x · r.
template <typename T>
void backward_rows(const T* x, const float* w, const T* g, const float* rstd, T* dx, float* dw,
                   int64_t rows, int64_t dim) {
  const int threads = at::get_num_threads();
  std::vector<float> partial_dw(dw != nullptr ? static_cast<size_t>(threads * dim) : 0, 0.0f);
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / dim), [&](int64_t begin, int64_t end) {
    std::vector<float> gw(static_cast<size_t>(dim));
    float* own_dw = dw != nullptr
                        ? partial_dw.data() + static_cast<int64_t>(at::get_thread_num()) * dim
                        : nullptr;
    for (int64_t row = begin; row < end; ++row) {
      const T* xr = x + row * dim;
      const T* gr = g + row * dim;
      const float r = rstd[row];
      for (int64_t j = 0; j < dim; ++j)
        gw[j] = w != nullptr ? bf16::load(gr + j) * w[j] : bf16::load(gr + j);
      const float c = -0.5f * dot(gw.data(), xr, dim) * (r * r * r) / static_cast<float>(dim);
      T* dxr = dx + row * dim;
      for (int64_t j = 0; j < dim; ++j) {
        const float xj = bf16::load(xr + j);
        store(dxr + j, gw[j] * r + (2.0f * xj) * c);
      }
      if (own_dw != nullptr)
        for (int64_t j = 0; j < dim; ++j)
          own_dw[j] += bf16::load(gr + j) * (bf16::load(xr + j) * r);
    }
  });
  if (dw == nullptr) return;
  for (int64_t j = 0; j < dim; ++j) {
    float sum = 0;
    for (int t = 0; t < threads; ++t) sum += partial_dw[static_cast<size_t>(t * dim + j)];
    dw[j] = sum;
  }
}

template <typename F>
void on_dtype(const torch::Tensor& x, F&& f) {
  if (x.scalar_type() == torch::kFloat32) {
    f(float{});
  } else {
    f(uint16_t{});
  }
}

template <typename T>
T* data_of(const torch::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& weight, double eps) {
    const torch::Tensor x = input.contiguous();
    const int64_t dim = x.size(-1), rows = dim == 0 ? 0 : x.numel() / dim;
    const bool scaled = weight.numel() > 0;
    const torch::Tensor w = scaled ? weight.to(torch::kFloat32).contiguous() : torch::Tensor();
    torch::Tensor y = torch::empty_like(x);
    torch::Tensor rstd = torch::empty({rows}, x.options().dtype(torch::kFloat32));
    on_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      forward_rows<T>(data_of<T>(x), scaled ? w.data_ptr<float>() : nullptr, data_of<T>(y),
                      rstd.data_ptr<float>(), rows, dim, static_cast<float>(eps));
    });
    ctx->save_for_backward({x, scaled ? w : weight, rstd});
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& w = saved[1];
    const torch::Tensor& rstd = saved[2];
    const bool scaled = w.numel() > 0;
    const int64_t dim = x.size(-1), rows = dim == 0 ? 0 : x.numel() / dim;
    const torch::Tensor g = grads[0].to(x.scalar_type()).contiguous();
    torch::Tensor dx = torch::empty_like(x);
    const bool want_dw = scaled && ctx->needs_input_grad(1);
    torch::Tensor dw =
        want_dw ? torch::empty({dim}, x.options().dtype(torch::kFloat32)) : torch::Tensor();
    on_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      backward_rows<T>(data_of<T>(x), scaled ? w.data_ptr<float>() : nullptr, data_of<T>(g),
                       rstd.data_ptr<float>(), data_of<T>(dx),
                       want_dw ? dw.data_ptr<float>() : nullptr, rows, dim);
    });
    if (want_dw)
      dw = dw.to(static_cast<torch::ScalarType>(ctx->saved_data["weight_dtype"].toInt()));
    return {dx, dw, torch::Tensor()};
  }
};

}  // namespace

bool rms_norm_cpu_applies(const torch::Tensor& x) {
  return x.device().is_cpu() &&
         (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16) &&
         x.dim() >= 1;
}

torch::Tensor rms_norm_cpu(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  TORCH_CHECK(rms_norm_cpu_applies(x), "rms_norm_cpu: a float32 or bf16 CPU tensor, got ",
              x.scalar_type(), " on ", x.device());
  TORCH_CHECK(!weight.defined() || (weight.dim() == 1 && weight.size(0) == x.size(-1)),
              "rms_norm_cpu: weight of ", weight.defined() ? weight.sizes() : c10::IntArrayRef{},
              " for rows of ", x.size(-1));
  return RmsNormFunction::apply(x, weight.defined() ? weight : torch::empty({0}), eps);
}

}  // namespace gemma
