#include "kernels/nf4_fused_matmul.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/nf4_cpu_simd.h"

namespace gemma {

namespace {

using nf4_simd::AbsmaxSource;

// The operands of one product, as raw pointers.
struct Operands {
  const uint8_t* packed;
  AbsmaxSource absmax;
  const float* lut;
  bool bf16_weight;
  const float* x;  // [rows, in], float32
  int64_t rows, in, out;
  float* y;  // [rows, out], float32
};

__attribute__((target("avx2,fma"))) inline __m256 round_to_bf16_values(__m256 v) {
  // Round to nearest even on the bit pattern and keep the upper half: as float_to_bf16 for every
  // finite value and for the quiet NaN a product makes.
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb);
  return _mm256_castsi256_ps(
      _mm256_and_si256(rounded, _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u))));
}

__attribute__((target("avx2,fma"))) inline float horizontal_sum(__m256 a, __m256 b) {
  const __m256 s = _mm256_add_ps(a, b);
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v);
}

// The 16 values of one block (two vectors), rounded to bf16 for a bf16 weight.
__attribute__((target("avx2,fma"))) inline void block_vectors(const Operands& op, int64_t block,
                                                              __m256 lut_lo, __m256 lut_hi,
                                                              __m256& lo, __m256& hi) {
  const __m256 scale = _mm256_set1_ps(op.absmax(block));
  lo = _mm256_mul_ps(lut_lo, scale);
  hi = _mm256_mul_ps(lut_hi, scale);
  if (op.bf16_weight) {
    lo = round_to_bf16_values(lo);
    hi = round_to_bf16_values(hi);
  }
}

// One row of x (decoding): four partial sums in registers, so consecutive blocks never wait on
// each other's multiply-adds.
__attribute__((target("avx2,fma"))) void product_one_row_avx2(const Operands& op, int64_t begin,
                                                              int64_t end) {
  const int64_t blocks_per_row = op.in / kNf4BlockSize;
  const __m256 lut_lo = _mm256_loadu_ps(op.lut), lut_hi = _mm256_loadu_ps(op.lut + 8);
  for (int64_t o = begin; o < end; ++o) {
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      const int64_t block = o * blocks_per_row + k;
      __m256 lo, hi;
      block_vectors(op, block, lut_lo, lut_hi, lo, hi);
      const uint8_t* bytes = op.packed + block * (kNf4BlockSize / 2);
      const float* xk = op.x + k * kNf4BlockSize;
      for (int64_t g = 0; g < 8; ++g) {
        s[g % 4] = _mm256_fmadd_ps(nf4_simd::lookup8(bytes + 4 * g, lo, hi),
                                   _mm256_loadu_ps(xk + 8 * g), s[g % 4]);
      }
    }
    op.y[o] = horizontal_sum(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]));
  }
}

// Output features [begin, end) for every row of x. Per block: its 16 values (two vectors), its 64
// codes looked up into 8 vectors of weights, then 8 multiply-adds per row of x into two partial
// sums per row (kept in `sums`, so any number of rows shares one dequantization).
__attribute__((target("avx2,fma"))) void product_rows_avx2(const Operands& op, int64_t begin,
                                                           int64_t end) {
  const int64_t blocks_per_row = op.in / kNf4BlockSize;
  const __m256 lut_lo = _mm256_loadu_ps(op.lut), lut_hi = _mm256_loadu_ps(op.lut + 8);
  std::vector<float> sums(static_cast<size_t>(op.rows) * 16);
  for (int64_t o = begin; o < end; ++o) {
    std::fill(sums.begin(), sums.end(), 0.0f);
    for (int64_t k = 0; k < blocks_per_row; ++k) {
      const int64_t block = o * blocks_per_row + k;
      __m256 lo, hi;
      block_vectors(op, block, lut_lo, lut_hi, lo, hi);
      const uint8_t* bytes = op.packed + block * (kNf4BlockSize / 2);
      __m256 wv[8];
      for (int64_t g = 0; g < 8; ++g) wv[g] = nf4_simd::lookup8(bytes + 4 * g, lo, hi);
      const float* xk = op.x + k * kNf4BlockSize;
      for (int64_t m = 0; m < op.rows; ++m) {
        const float* xm = xk + m * op.in;
        float* acc = sums.data() + m * 16;
        __m256 s0 = _mm256_loadu_ps(acc), s1 = _mm256_loadu_ps(acc + 8);
        for (int64_t g = 0; g < 8; g += 2) {
          s0 = _mm256_fmadd_ps(wv[g], _mm256_loadu_ps(xm + 8 * g), s0);
          s1 = _mm256_fmadd_ps(wv[g + 1], _mm256_loadu_ps(xm + 8 * g + 8), s1);
        }
        _mm256_storeu_ps(acc, s0);
        _mm256_storeu_ps(acc + 8, s1);
      }
    }
    for (int64_t m = 0; m < op.rows; ++m)
      op.y[m * op.out + o] = horizontal_sum(_mm256_loadu_ps(sums.data() + m * 16),
                                            _mm256_loadu_ps(sums.data() + m * 16 + 8));
  }
}

}  // namespace

bool nf4_fused_matmul_applies(const torch::Tensor& x, const Nf4Weight& w, int64_t max_rows) {
  if (nf4_simd::kIsa == nf4_simd::Isa::kScalar) return false;
  if (!x.device().is_cpu() || !w.packed.device().is_cpu()) return false;
  if (w.shape.size() != 2 || w.blocksize != kNf4BlockSize || w.shape[1] % kNf4BlockSize != 0)
    return false;
  if (w.dtype != torch::kFloat32 && w.dtype != torch::kBFloat16) return false;
  const auto dt = x.scalar_type();
  if ((dt != torch::kFloat32 && dt != torch::kBFloat16) || x.dim() < 1 || x.size(-1) != w.shape[1])
    return false;
  const int64_t rows = x.numel() / w.shape[1];
  return rows >= 1 && rows <= max_rows;
}

torch::Tensor nf4_fused_matmul(const torch::Tensor& x, const Nf4Weight& w) {
  TORCH_CHECK(nf4_fused_matmul_applies(x, w, std::numeric_limits<int64_t>::max()),
              "nf4_fused_matmul: an unsupported product (x ", x.sizes(), " ", x.scalar_type(),
              ", weight ", w.shape, ")");
  const int64_t in = w.shape[1], out = w.shape[0], rows = x.numel() / in;
  const torch::Tensor xf = x.reshape({rows, in}).to(torch::kFloat32).contiguous();
  torch::Tensor y = torch::empty({rows, out}, torch::kFloat32);
  const torch::Tensor codes = w.absmax_codes.contiguous();
  const torch::Tensor map = w.nested_quant_map.to(torch::kFloat32).contiguous();
  const torch::Tensor nested = w.nested_absmax.to(torch::kFloat32).contiguous();
  const torch::Tensor lut = w.quant_map.to(torch::kFloat32).contiguous();
  const Operands op{
      w.packed.data_ptr<uint8_t>(),
      {codes.data_ptr<uint8_t>(), map.data_ptr<float>(), nested.data_ptr<float>(), w.offset},
      lut.data_ptr<float>(),
      w.dtype == torch::kBFloat16,
      xf.data_ptr<float>(),
      rows,
      in,
      out,
      y.data_ptr<float>()};
  // about 64K weights a task: enough to amortize a task, small enough to balance 2-16 threads
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / in);
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    if (rows == 1) {
      product_one_row_avx2(op, begin, end);
    } else {
      product_rows_avx2(op, begin, end);
    }
  });
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  return y.to(x.scalar_type()).view(shape);
}

}  // namespace gemma
