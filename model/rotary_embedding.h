// Rotary position embedding of Gemma 4 (gemma4-architecture.md §2.4): "rotate-half" layout, fp32
// tables cast to the activation dtype. Sliding layers use the default RoPE over the whole head;
// full layers use "proportional" RoPE, whose frequencies are θ^(-2i/d) for the first
// floor(p·d/2) pairs and 0 after, so only dims [0, R) and [d/2, d/2 + R) rotate.
#pragma once

#include <torch/torch.h>

#include "model/gemma4_config.h"

namespace gemma {

// The inverse frequencies [head_dim / 2] (float32) of one layer type.
torch::Tensor rope_inverse_frequencies(const RopeSpec& spec, int64_t head_dim);

struct RopeTables {
  torch::Tensor cos;  // [B, T, head_dim], activation dtype
  torch::Tensor sin;
};

// Tables for `position_ids` [B, T] (absolute positions), cast to `dtype` on `device`.
RopeTables rope_tables(const torch::Tensor& inverse_frequencies, const torch::Tensor& position_ids,
                       torch::ScalarType dtype);

// x [B, T, heads, head_dim] rotated by the tables.
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& tables);

}  // namespace gemma
