// bfloat16 as the upper 16 bits of a float32, one value at a time: widening is exact; narrowing
// rounds to nearest, ties to even, as torch converts float32 to bfloat16 (a NaN stays a quiet
// NaN). The vector forms are in kernels/avx2_lanes.h.
#pragma once

#include <cstdint>
#include <cstring>

namespace gemma::bf16 {

inline uint16_t from_float(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// f rounded to the nearest bf16 value, as a float32.
inline float rounded(float f) { return to_float(from_float(f)); }

// A stored value as float32, for code written once for both storages: float32 as it is, bf16
// bits widened.
inline float load(const float* p) { return *p; }
inline float load(const uint16_t* p) { return to_float(*p); }

}  // namespace gemma::bf16
