// AdamW8bit's update on a CUDA parameter, as bitsandbytes 0.50.2's CUDA kernels compute it
// (qlora-formats.md §2.2, "CUDA kernel"), which is not what its CPU backend computes: float32
// arithmetic, m and v of an element set to 0 (and the element left alone) where the gradient is
// not finite, decay *after* the Adam step (a second rounding for bf16 parameters), `eps * c2`
// inside the denominator, and requantization to the exact nearest code with a sign fix on the
// first moment. A PyTorch user gets these numbers from `bnb.optim.AdamW8bit` on a GPU, so a
// CUDA run of ours does too.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace gemma {

struct AdamWStepHyper {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // 1-based, after the increment
};

// One 8-bit step: `state1`/`state2` uint8 codes (param's shape), `absmax1`/`absmax2` float32
// [ceil(n/256)], all on param's device and updated in place. The CUDA kernel
// (kernels/adamw_8bit_cuda_kernels.cu) when it is built in and the tensors are on a GPU, the
// reference otherwise.
void adamw_8bit_cuda_step(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& state1,
                          torch::Tensor& state2, torch::Tensor& absmax1, torch::Tensor& absmax2,
                          const AdamWStepHyper& hyper);
// The same step in plain LibTorch on any device: the oracle the kernel is tested against.
void adamw_8bit_cuda_step_reference(torch::Tensor& param, const torch::Tensor& grad,
                                    torch::Tensor& state1, torch::Tensor& state2,
                                    torch::Tensor& absmax1, torch::Tensor& absmax2,
                                    const AdamWStepHyper& hyper);

// Tensors under min_8bit_size keep float32 moments `m`, `v` (kOptimizer32bit2State): LibTorch
// ops, any device.
void adamw_32bit_state_cuda_step(torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& m,
                                 torch::Tensor& v, const AdamWStepHyper& hyper);

// The exact nearest code of each float32 `x` in an ascending 256-entry `map` (on x's device), by
// the kernel's seven-step halving search and midpoint test (a tie keeps the searched index).
torch::Tensor nearest_code_reference(const torch::Tensor& map, const torch::Tensor& x,
                                     bool is_signed);

}  // namespace gemma
