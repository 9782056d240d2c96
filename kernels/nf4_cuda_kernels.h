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

}  // namespace gemma::cuda
