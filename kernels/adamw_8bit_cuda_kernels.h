// Launcher of the 8-bit blockwise AdamW CUDA kernel (adamw_8bit_cuda_kernels.cu): one step on
// one tensor, as bitsandbytes 0.50.2's kOptimizerStatic8bit2StateBlockwise computes it
// (qlora-formats.md §2.2, "CUDA kernel"). Plain pointers and a raw stream, so the .cu file needs
// no LibTorch headers.
#pragma once

#include <cstdint>

namespace gemma::cuda {

enum class ParamType { kFloat32, kBFloat16, kFloat16 };

struct AdamW8bitHyper {
  float lr, beta1, beta2, eps, weight_decay;
  int step;  // 1-based, after the increment
};

// `param` and `grad` hold n elements of `type`; `state1`/`state2` n codes into `map1` (signed,
// 256 float32) and `map2` (unsigned); `absmax1`/`absmax2` ceil(n/256) float32, rewritten.
void launch_adamw_8bit_blockwise(void* param, const void* grad, ParamType type, uint8_t* state1,
                                 uint8_t* state2, float* absmax1, float* absmax2, const float* map1,
                                 const float* map2, int64_t n, const AdamW8bitHyper& hyper,
                                 void* stream);

}  // namespace gemma::cuda
