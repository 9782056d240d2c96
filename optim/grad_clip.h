// Gradient clipping by the global L2 norm, as torch.nn.utils.clip_grad_norm_ (norm_type 2) does
// it before every optimizer step (the Trainer's max_grad_norm).
#pragma once

#include <torch/torch.h>

#include "optim/optimizer.h"

namespace gemma {

// Scales every defined gradient by min(1, max_norm / (total + 1e-6)) and returns `total`, the
// L2 norm over all gradients before clipping (NaN or Inf when a gradient is not finite; the
// gradients then become non-finite too, as in torch).
double clip_grad_norm(const NamedTensors& params, double max_norm);

}  // namespace gemma
