// What the CPU NF4 paths share (nf4_cpu.cpp's dequantization, nf4_fused_matmul.cpp's matmul): the
// instruction set picked at run time, one block's absmax with double quantization undone, the 16
// values a block's codes stand for, and an AVX2 lookup of 8 codes in those 16 values. Both files
// are compiled with -ffp-contract=off, so a*b+c is rounded twice, as LibTorch's reference rounds
// it.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/bf16_bits.h"
#include "kernels/nf4.h"

namespace gemma::nf4_simd {

enum class Isa { kScalar, kAvx2, kAvx512 };

inline Isa detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
  return Isa::kScalar;
}

inline const Isa kIsa = detect_isa();

// The pointers the double-quantized absmax is rebuilt from, block by block.
struct AbsmaxSource {
  const uint8_t* codes = nullptr;  // [blocks]
  const float* map = nullptr;      // the signed dynamic map [256]
  const float* nested = nullptr;   // [ceil(blocks / 256)]
  float offset = 0.0f;

  // As dequantize_nf4_absmax: map[code] · nested absmax (rounded), plus the offset (rounded).
  float operator()(int64_t block) const {
    const float scaled = map[codes[block]] * nested[block / kNf4NestedBlockSize];
    return scaled + offset;
  }
};

// The 16 values the codes of a block with this absmax dequantize to: table · absmax in float32,
// rounded to bfloat16 when the weight's dtype is bf16 (still stored as float32).
inline void block_values(const float* lut, float absmax, bool bf16, float* values) {
  for (int k = 0; k < 16; ++k) {
    const float v = lut[k] * absmax;
    values[k] = bf16 ? bf16::rounded(v) : v;
  }
}

// values[code] for the 8 elements whose codes are the 4 bytes at `bytes` (first element in the
// high nibble). The 4 bytes are broadcast to every lane and shifted so that lane j holds element
// j's code in its low 4 bits: no byte shuffles, so the two table permutes have the shuffle unit
// to themselves. vpermps reads the low 3 bits; bit 3 (codes 8..15 come from `hi`) is moved to the
// sign bit, which blendv reads.
__attribute__((target("avx2,fma"))) inline __m256 lookup8(const uint8_t* bytes, __m256 lo,
                                                          __m256 hi) {
  int32_t word;
  std::memcpy(&word, bytes, 4);
  const __m256i shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
  const __m256i idx = _mm256_srlv_epi32(_mm256_set1_epi32(word), shifts);
  const __m256 from_lo = _mm256_permutevar8x32_ps(lo, idx);
  const __m256 from_hi = _mm256_permutevar8x32_ps(hi, idx);
  return _mm256_blendv_ps(from_lo, from_hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

}  // namespace gemma::nf4_simd
