// Eight float32 lanes (AVX2) as the CPU kernels use them: the sum of two vectors' lanes, bf16
// values widened to float32 (exact: the bits move to the upper half), eight values of either
// storage loaded as float32, and float32 rounded to bf16 values (ties to even, as torch converts;
// NaN inputs are not expected). For functions compiled with target("avx2,fma"); callers check the
// CPU first.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace gemma::avx2 {

__attribute__((target("avx2,fma"))) inline float horizontal_sum(__m256 a, __m256 b) {
  const __m256 s = _mm256_add_ps(a, b);
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v);
}

__attribute__((target("avx2,fma"))) inline __m256 widen_bf16x8(const uint16_t* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

// Eight stored values as float32 lanes, for code written once for both storages: float32 as
// they are, bf16 bits widened.
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* p) {
  return _mm256_loadu_ps(p);
}
__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t* p) {
  return widen_bf16x8(p);
}

// The lanes' bits plus the round-to-nearest-even increment: the bf16 is in the upper 16 bits.
__attribute__((target("avx2,fma"))) inline __m256i bf16_rounding_bits(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb);
}

__attribute__((target("avx2,fma"))) inline __m256 round_to_bf16_values(__m256 v) {
  return _mm256_castsi256_ps(_mm256_and_si256(
      bf16_rounding_bits(v), _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u))));
}

}  // namespace gemma::avx2
