#include "model/step_decoder_ops.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/avx2_lanes.h"

namespace gemma::decode_ops {

namespace {

// gelu_pytorch_tanh (LibTorch's formula) or the exact erf form.
inline float gelu(float x, bool tanh_form) {
  if (tanh_form) {
    constexpr float kBeta = static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5);
    constexpr float kKappa = 0.044715f;
    const float cube = x * x * x;
    const float inner = kBeta * (x + kKappa * cube);
    return 0.5f * x * (1.0f + std::tanh(inner));
  }
  return x * 0.5f * (1.0f + std::erf(x * static_cast<float>(M_SQRT1_2)));
}

// --- 8 lanes at a time (AVX2): tanh, the GeGLU activation, the softcap ------------------------

// e^x for x in [-88, 88] (Cephes' expf: a range reduction by ln 2 in two parts and a degree-6
// polynomial; about 1 ulp).
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i exponent =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(exponent));
}

// tanh (Cephes' tanhf: an odd polynomial below 0.625, 1 - 2 / (e^2|x| + 1) above; about 2 ulp).
__attribute__((target("avx2,fma"))) inline __m256 tanh8(__m256 x) {
  const __m256 sign = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN)));
  const __m256 z = _mm256_xor_ps(x, sign);  // |x|
  const __m256 e = exp8(_mm256_min_ps(_mm256_add_ps(z, z), _mm256_set1_ps(88.0f)));
  const __m256 far =
      _mm256_sub_ps(_mm256_set1_ps(1.0f),
                    _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
  const __m256 z2 = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(2.06390887954e-2f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(-5.37397155531e-2f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(1.33314422036e-1f));
  p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(-3.33332819422e-1f));
  const __m256 near = _mm256_fmadd_ps(_mm256_mul_ps(p, z2), z, z);
  const __m256 is_far = _mm256_cmp_ps(z, _mm256_set1_ps(0.625f), _CMP_GT_OQ);
  return _mm256_or_ps(_mm256_blendv_ps(near, far, is_far), sign);
}

// The compute dtype's rounding, 8 lanes (as Rounding; NaN inputs are not expected here).
__attribute__((target("avx2,fma"))) inline __m256 round8(__m256 v, bool bf16) {
  return bf16 ? avx2::round_to_bf16_values(v) : v;
}

template <typename T>
__attribute__((target("avx2,fma"))) float dot(const float* q, const T* k, int64_t d) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), avx2::load8(k + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), avx2::load8(k + i + 8), s1);
  }
  for (; i + 8 <= d; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), avx2::load8(k + i), s0);
  float sum = avx2::horizontal_sum(s0, s1);
  for (; i < d; ++i) sum += q[i] * bf16::load(k + i);
  return sum;
}

// acc += a · v
template <typename T>
__attribute__((target("avx2,fma"))) void add_scaled(float a, const T* v, float* acc, int64_t d) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= d; i += 8)
    _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(va, avx2::load8(v + i), _mm256_loadu_ps(acc + i)));
  for (; i < d; ++i) acc[i] += a * bf16::load(v + i);
}

}  // namespace

// Gemma's RMSNorm of `dim` values (float32 inside): x · (mean(x²) + eps)^(-1/2) · w, rounded.
void rms_norm(const float* x, float* y, int64_t dim, const std::vector<float>& weight, float eps,
              Rounding rd) {
  float sum = 0.0f;
  for (int64_t i = 0; i < dim; ++i) sum += x[i] * x[i];
  const float mean = sum / static_cast<float>(dim);
  const float r = 1.0f / std::sqrt(mean + eps);
  if (weight.empty()) {
    for (int64_t i = 0; i < dim; ++i) y[i] = rd(x[i] * r);
  } else {
    for (int64_t i = 0; i < dim; ++i) y[i] = rd((x[i] * r) * weight[i]);
  }
}

// act = rd(rd(gelu(gate)) · other) over n values; `other` may be `act`.
__attribute__((target("avx2,fma"))) void gated_gelu(const float* gate, const float* other,
                                                    float* act, int64_t n, bool tanh_form,
                                                    Rounding rd) {
  int64_t i = 0;
  if (tanh_form) {
    const __m256 beta = _mm256_set1_ps(static_cast<float>(M_SQRT2 * M_2_SQRTPI * 0.5));
    const __m256 kappa = _mm256_set1_ps(0.044715f), half = _mm256_set1_ps(0.5f),
                 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
      const __m256 x = _mm256_loadu_ps(gate + i);
      const __m256 cube = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
      const __m256 inner = _mm256_mul_ps(beta, _mm256_add_ps(x, _mm256_mul_ps(kappa, cube)));
      const __m256 g = _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, tanh8(inner)));
      const __m256 y = _mm256_mul_ps(round8(g, rd.bf16), _mm256_loadu_ps(other + i));
      _mm256_storeu_ps(act + i, round8(y, rd.bf16));
    }
  }
  for (; i < n; ++i) act[i] = rd(rd(gelu(gate[i], tanh_form)) * other[i]);
}

// v = rd(rd(tanh(rd(v / cap))) · cap) over n values: the final logit softcap.
__attribute__((target("avx2,fma"))) void softcap(float* v, int64_t n, float cap, Rounding rd) {
  const __m256 vcap = _mm256_set1_ps(cap);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 t = tanh8(round8(_mm256_div_ps(_mm256_loadu_ps(v + i), vcap), rd.bf16));
    _mm256_storeu_ps(v + i, round8(_mm256_mul_ps(round8(t, rd.bf16), vcap), rd.bf16));
  }
  for (; i < n; ++i) v[i] = rd(rd(std::tanh(rd(v[i] / cap))) * cap);
}

void rope_head(const float* x, float* out, const float* cos, const float* sin, int64_t half,
               Rounding rd) {
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = x[i], x2 = x[i + half];
    out[i] = rd(rd(x1 * cos[i]) + rd(-x2 * sin[i]));
    out[i + half] = rd(rd(x2 * cos[i]) + rd(x1 * sin[i]));
  }
}

// One query head over its keys [0, n) (rows of `d` at `keys`/`values`, `valid[j]` false for a
// padding key): float32 scores and softmax, as the fused attention kernel computes them; scaling
// 1.0 (Gemma 4's QK norms take its place). out [d] rounded to the compute dtype.
template <typename T>
void attend(const float* q, const T* keys, const T* values, const bool* valid, int64_t n, int64_t d,
            float* scores, float* acc, float* out, Rounding rd) {
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = valid[j] ? dot(q, keys + j * d, d) : -std::numeric_limits<float>::infinity();
    best = std::max(best, scores[j]);
  }
  std::fill(acc, acc + d, 0.0f);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    if (!valid[j]) continue;
    const float p = std::exp(scores[j] - best);
    sum += p;
    add_scaled(p, values + j * d, acc, d);
  }
  for (int64_t i = 0; i < d; ++i) out[i] = rd(acc[i] / sum);
}

template void attend<float>(const float*, const float*, const float*, const bool*, int64_t, int64_t,
                            float*, float*, float*, Rounding);
template void attend<uint16_t>(const float*, const uint16_t*, const uint16_t*, const bool*, int64_t,
                               int64_t, float*, float*, float*, Rounding);

}  // namespace gemma::decode_ops
