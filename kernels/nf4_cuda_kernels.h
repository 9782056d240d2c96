// Launchers of the NF4 CUDA kernels (nf4_cuda_kernels.cu). Plain pointers and a raw stream, so the
// .cu file needs no LibTorch headers and compiles fast with nvcc.
#pragma once

#include <cstdint>

namespace gemma::cuda {

// Per 64-block absmax (float32) and packed codes for a float32 input of n elements. `table` is the
// 16-entry NF4 table in device memory.
void launch_nf4_quantize(const float* x, int64_t n, const float* table, float* absmax,
                         uint8_t* packed, void* stream);
// out[i] = lut[code_i] · absmax[i / 64], written as float32 (`out_f32`) or bfloat16 bits
// (`out_bf16`).
void launch_nf4_dequantize(const uint8_t* packed, const float* absmax, const float* lut, int64_t n,
                           float* out_f32, uint16_t* out_bf16, void* stream);

// The operands of the fused NF4 product y = x · Wᵀ (nf4_fused_matmul_cuda.cu), all in device
// memory: W [out, in] in bitsandbytes' double-quantized form with in % 64 == 0, x [rows, in] and
// y [rows, out] float32 and contiguous.
struct Nf4FusedOperands {
  const uint8_t* packed;        // [out · in / 2]
  const uint8_t* absmax_codes;  // [out · in / 64]
  const float* nested_map;      // [256]
  const float* nested_absmax;   // [ceil(blocks / 256)]
  float offset;
  const float* lut;  // the NF4 table [16]
  bool bf16_weight;  // values rounded to bfloat16, as dequantizing a bf16 weight gives them
  const float* x;
  int64_t rows, in, out;
  float* y;
};
// False (and nothing launched) when in is not a multiple of 64.
bool launch_nf4_fused_matmul(const Nf4FusedOperands& op, void* stream);

}  // namespace gemma::cuda
