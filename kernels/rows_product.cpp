// The dense codes of rows_product (float32 and bf16 weights), the activations' derived forms and
// the dispatch by storage format. The NF4 codes live in nf4_fused_matmul.cpp.
#include "kernels/rows_product.h"

#include <immintrin.h>

#include <algorithm>

#include "kernels/avx2_lanes.h"
#include "kernels/bf16_bits.h"

namespace gemma {

namespace {

using avx2::horizontal_sum;
using avx2::load8;

// Outputs [begin, end) for kRows rows of float32 x (row stride `in`): two independent sums per
// row, 16 weights a step, then 8, then one at a time.
template <typename W, int kRows>
__attribute__((target("avx2,fma"))) void dense_rows_avx2(const W* w_all, const float* x, int64_t in,
                                                         int64_t out, float* y, int64_t begin,
                                                         int64_t end) {
  for (int64_t o = begin; o < end; ++o) {
    const W* w = w_all + o * in;
    __m256 s0[kRows], s1[kRows];
    for (int m = 0; m < kRows; ++m) s0[m] = s1[m] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= in; k += 16) {
      const __m256 w0 = load8(w + k), w1 = load8(w + k + 8);
      for (int m = 0; m < kRows; ++m) {
        s0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * in + k), s0[m]);
        s1[m] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * in + k + 8), s1[m]);
      }
    }
    if (k + 8 <= in) {
      const __m256 w0 = load8(w + k);
      for (int m = 0; m < kRows; ++m)
        s0[m] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * in + k), s0[m]);
      k += 8;
    }
    for (int m = 0; m < kRows; ++m) {
      float sum = horizontal_sum(s0[m], s1[m]);
      for (int64_t t = k; t < in; ++t) sum += bf16::load(w + t) * x[m * in + t];
      y[m * out + o] = sum;
    }
  }
}

// bf16 weights by unpacking: each 16 weights (32 bytes) become float32 lanes by interleaving
// their words with zeros, which leaves them in the order 0-3, 8-11 | 4-7, 12-15 (xw: x in that
// order, bf16_words_order); one load and two unpacks for 16 weights where widening takes four.
// One row keeps four independent sums (32 weights a step), more rows two each. in % 16 == 0.
template <int kRows>
__attribute__((target("avx2,fma"))) void bf16_rows_unpacked_avx2(const uint16_t* w_all,
                                                                 const float* xw, int64_t in,
                                                                 int64_t out, float* y,
                                                                 int64_t begin, int64_t end) {
  constexpr int64_t kSteps = kRows == 1 ? 2 : 1;  // 16-weight steps per loop iteration
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t o = begin; o < end; ++o) {
    const uint16_t* w = w_all + o * in;
    __m256 s[kRows][2 * kSteps];
    for (int m = 0; m < kRows; ++m)
      for (int64_t j = 0; j < 2 * kSteps; ++j) s[m][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 * kSteps <= in; k += 16 * kSteps) {
      for (int64_t j = 0; j < kSteps; ++j) {
        const __m256i words = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k + 16 * j));
        const __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, words));
        const __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, words));
        for (int m = 0; m < kRows; ++m) {
          const float* x = xw + m * in + k + 16 * j;
          s[m][2 * j] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x), s[m][2 * j]);
          s[m][2 * j + 1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + 8), s[m][2 * j + 1]);
        }
      }
    }
    for (; k < in; k += 16) {  // one row's last 16-weight step
      const __m256i words = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
      const __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, words));
      const __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, words));
      for (int m = 0; m < kRows; ++m) {
        s[m][0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xw + m * in + k), s[m][0]);
        s[m][1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xw + m * in + k + 8), s[m][1]);
      }
    }
    for (int m = 0; m < kRows; ++m) {
      __m256 a = s[m][0], b = s[m][1];
      if constexpr (kSteps == 2) {
        a = _mm256_add_ps(a, s[m][2]);
        b = _mm256_add_ps(b, s[m][3]);
      }
      y[m * out + o] = horizontal_sum(a, b);
    }
  }
}

void bf16_rows_unpacked_avx2_all(const uint16_t* w, const float* xw, int64_t rows, int64_t in,
                                 int64_t out, float* y, int64_t begin, int64_t end) {
  using Code = void (*)(const uint16_t*, const float*, int64_t, int64_t, float*, int64_t, int64_t);
  static constexpr Code kByRows[] = {bf16_rows_unpacked_avx2<1>, bf16_rows_unpacked_avx2<2>,
                                     bf16_rows_unpacked_avx2<3>, bf16_rows_unpacked_avx2<4>};
  for (int64_t first = 0; first < rows; first += 4) {
    const int64_t n = std::min<int64_t>(4, rows - first);
    kByRows[n - 1](w, xw + first * in, in, out, y + first * out, begin, end);
  }
}

template <typename W>
void dense_rows_avx2_all(const W* w, const float* x, int64_t rows, int64_t in, int64_t out,
                         float* y, int64_t begin, int64_t end) {
  using Code = void (*)(const W*, const float*, int64_t, int64_t, float*, int64_t, int64_t);
  static constexpr Code kByRows[] = {dense_rows_avx2<W, 1>, dense_rows_avx2<W, 2>,
                                     dense_rows_avx2<W, 3>, dense_rows_avx2<W, 4>};
  for (int64_t first = 0; first < rows; first += 4) {
    const int64_t n = std::min<int64_t>(4, rows - first);
    kByRows[n - 1](w, x + first * in, in, out, y + first * out, begin, end);
  }
}

// AVX512_BF16: `vdpbf16ps` multiplies 32 bf16 pairs into 16 float32 sums straight from the
// weight's bytes; two independent sums per row, 64 weights a step, a last step of 32.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline __m512 dot32(__m512 acc,
                                                                           const uint16_t* a,
                                                                           const uint16_t* b) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(_mm512_loadu_si512(a)),
                          reinterpret_cast<__m512bh>(_mm512_loadu_si512(b)));
}

template <int kRows>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void bf16_rows_avx512(
    const uint16_t* w_all, const uint16_t* x, int64_t in, int64_t out, float* y, int64_t begin,
    int64_t end) {
  for (int64_t o = begin; o < end; ++o) {
    const uint16_t* w = w_all + o * in;
    __m512 s0[kRows], s1[kRows];
    for (int m = 0; m < kRows; ++m) s0[m] = s1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= in; k += 64) {
      for (int m = 0; m < kRows; ++m) {
        s0[m] = dot32(s0[m], w + k, x + m * in + k);
        s1[m] = dot32(s1[m], w + k + 32, x + m * in + k + 32);
      }
    }
    if (k < in) {
      for (int m = 0; m < kRows; ++m) s0[m] = dot32(s0[m], w + k, x + m * in + k);
    }
    for (int m = 0; m < kRows; ++m)
      y[m * out + o] = _mm512_reduce_add_ps(_mm512_add_ps(s0[m], s1[m]));
  }
}

void bf16_rows_avx512_all(const uint16_t* w, const uint16_t* x, int64_t rows, int64_t in,
                          int64_t out, float* y, int64_t begin, int64_t end) {
  using Code =
      void (*)(const uint16_t*, const uint16_t*, int64_t, int64_t, float*, int64_t, int64_t);
  static constexpr Code kByRows[] = {bf16_rows_avx512<1>, bf16_rows_avx512<2>, bf16_rows_avx512<3>,
                                     bf16_rows_avx512<4>, bf16_rows_avx512<5>, bf16_rows_avx512<6>,
                                     bf16_rows_avx512<7>, bf16_rows_avx512<8>};
  for (int64_t first = 0; first < rows; first += 8) {
    const int64_t n = std::min<int64_t>(8, rows - first);
    kByRows[n - 1](w, x + first * in, in, out, y + first * out, begin, end);
  }
}

}  // namespace

std::vector<RowsCode> rows_codes_here() {
  __builtin_cpu_init();
  std::vector<RowsCode> codes;
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return codes;
  codes.push_back(RowsCode::kAvx2);
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) return codes;
  codes.push_back(RowsCode::kAvx512);
  if (__builtin_cpu_supports("avx512bf16")) codes.push_back(RowsCode::kAvx512Bf16);
  return codes;
}

const char* rows_code_name(RowsCode code) {
  switch (code) {
    case RowsCode::kAvx2:
      return "avx2";
    case RowsCode::kAvx512:
      return "avx512";
    case RowsCode::kAvx512Bf16:
      return "avx512_bf16";
  }
  return "?";
}

std::optional<RowsCode> best_rows_code(bool bf16_activations) {
  static const std::vector<RowsCode> here = rows_codes_here();
  if (here.empty()) return std::nullopt;
  RowsCode code = here.back();
  if (code == RowsCode::kAvx512Bf16 && !bf16_activations) code = RowsCode::kAvx512;
  return code;
}

void nf4_avx2_order(const float* x, int64_t rows, int64_t in, float* out) {
  for (int64_t block = 0; block < rows * in; block += 64) {
    int64_t pos = 0;
    // even elements (high nibbles), then odd; per half the two byte interleaves (packed bytes
    // 0-7 | 16-23, then 8-15 | 24-31), each as its even words (0, 2, 4, 6 per 128-bit lane),
    // then its odd ones
    for (int64_t half = 0; half < 2; ++half) {
      for (int64_t interleave = 0; interleave < 2; ++interleave) {
        for (int64_t parity = 0; parity < 2; ++parity) {
          for (int64_t lane = 0; lane < 8; ++lane) {
            const int64_t byte = (lane / 4) * 16 + interleave * 8 + 2 * (lane % 4) + parity;
            out[block + pos++] = x[block + 2 * byte + half];
          }
        }
      }
    }
  }
}

void bf16_words_order(const float* x, int64_t rows, int64_t in, float* out) {
  static constexpr int64_t kFrom[16] = {0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15};
  for (int64_t group = 0; group < rows * in; group += 16)
    for (int64_t i = 0; i < 16; ++i) out[group + i] = x[group + kFrom[i]];
}

RowsInput RowsInputBuffer::prepare(const float* x, int64_t rows, int64_t in, RowsCode code) {
  RowsInput r;
  r.f32 = x;
  r.rows = rows;
  r.in = in;
  const auto n = static_cast<size_t>(rows * in);
  if (code != RowsCode::kAvx512Bf16 && in % 16 == 0) {
    f32_words_.resize(n);
    bf16_words_order(x, rows, in, f32_words_.data());
    r.f32_words = f32_words_.data();
  }
  if (code == RowsCode::kAvx2 && in % 64 == 0) {
    f32_nf4_.resize(n);
    nf4_avx2_order(x, rows, in, f32_nf4_.data());
    r.f32_nf4 = f32_nf4_.data();
  }
  if (code == RowsCode::kAvx512 && in % 32 == 0) {
    f32_pairs_.resize(n);
    for (int64_t g = 0; g < rows * in; g += 32) {
      for (int64_t j = 0; j < 16; ++j) {
        f32_pairs_[g + j] = x[g + 2 * j];
        f32_pairs_[g + 16 + j] = x[g + 2 * j + 1];
      }
    }
    r.f32_pairs = f32_pairs_.data();
  }
  if (code == RowsCode::kAvx512Bf16) {
    bf16_.resize(n);
    for (size_t i = 0; i < n; ++i) bf16_[i] = bf16::from_float(x[i]);
    r.bf16 = bf16_.data();
    if (in % 64 == 0) {
      bf16_pairs_.resize(n);
      for (int64_t g = 0; g < rows * in; g += 64) {
        for (int64_t j = 0; j < 32; ++j) {
          bf16_pairs_[g + j] = bf16_[g + 2 * j];
          bf16_pairs_[g + 32 + j] = bf16_[g + 2 * j + 1];
        }
      }
      r.bf16_pairs = bf16_pairs_.data();
    }
  }
  return r;
}

void bf16_rows_product(const uint16_t* w, int64_t in, int64_t out, const RowsInput& x,
                       RowsCode code, float* y, int64_t begin, int64_t end) {
  if (code == RowsCode::kAvx512Bf16 && x.bf16 != nullptr && in % 32 == 0) {
    bf16_rows_avx512_all(w, x.bf16, x.rows, in, out, y, begin, end);
  } else if (x.f32_words != nullptr && in % 16 == 0) {
    bf16_rows_unpacked_avx2_all(w, x.f32_words, x.rows, in, out, y, begin, end);
  } else {
    dense_rows_avx2_all(w, x.f32, x.rows, in, out, y, begin, end);
  }
}

void f32_rows_product(const float* w, int64_t in, int64_t out, const RowsInput& x, float* y,
                      int64_t begin, int64_t end) {
  dense_rows_avx2_all(w, x.f32, x.rows, in, out, y, begin, end);
}

void rows_product(const FrozenWeightView& w, const RowsInput& x, RowsCode code, float* y,
                  int64_t begin, int64_t end) {
  switch (w.format) {
    case FrozenWeightView::Format::kF32:
      f32_rows_product(w.f32, w.in, w.out, x, y, begin, end);
      return;
    case FrozenWeightView::Format::kBf16:
      bf16_rows_product(w.bf16, w.in, w.out, x, code, y, begin, end);
      return;
    case FrozenWeightView::Format::kNf4:
      nf4_rows_product(w.nf4, w.in, w.out, x, code, y, begin, end);
      return;
  }
}

}  // namespace gemma
