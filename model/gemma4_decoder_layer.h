// Gemma4DecoderLayer: one decoder layer, steps 1-6 of gemma4-architecture.md §2.3 in order.
// Its geometry (sliding or full, head dim, KV heads, KV sharing, K = V, MLP width, MoE, PLE) is
// fixed at construction from the config.
#pragma once

#include <torch/torch.h>

#include "model/gemma4_attention.h"
#include "model/gemma4_config.h"
#include "model/gemma4_feed_forward.h"
#include "model/rms_norm.h"

namespace gemma {

class Gemma4DecoderLayerImpl : public torch::nn::Module {
 public:
  Gemma4DecoderLayerImpl(const Gemma4Config& config, int layer_index);

  // x [B, T, H]; per_layer_input [B, T, P] (undefined without PLE).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& per_layer_input,
                        const LayerTypeInputs& inputs, SharedKv& shared, KvCache* cache);

  Gemma4Attention self_attn{nullptr};
  Gemma4Mlp mlp{nullptr};
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  RmsNorm pre_feedforward_layernorm{nullptr}, post_feedforward_layernorm{nullptr};
  // PLE models
  Linear per_layer_input_gate{nullptr}, per_layer_projection{nullptr};
  RmsNorm post_per_layer_input_norm{nullptr};
  // MoE model
  Gemma4Router router{nullptr};
  Gemma4Experts experts{nullptr};
  RmsNorm pre_feedforward_layernorm_2{nullptr}, post_feedforward_layernorm_1{nullptr},
      post_feedforward_layernorm_2{nullptr};
  torch::Tensor layer_scalar;  // [1], a buffer

 private:
  torch::Tensor feed_forward(const torch::Tensor& r);
  std::string activation_;
  int64_t layer_index_;
};
TORCH_MODULE(Gemma4DecoderLayer);

}  // namespace gemma
