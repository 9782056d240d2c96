// Gradient checkpointing per decoder layer: the forward keeps only the layer's input, and the
// backward runs the layer again with gradients on (a custom autograd function). KV sharing stays
// correct: a consumer layer takes its source's K/V as explicit inputs and a source layer returns
// its K/V as explicit outputs, so the consumers' gradients still reach the source's k_proj/v_proj
// (gemma4-architecture.md §5.6), and nothing touches a KV cache (training runs without one).
#pragma once

#include <torch/torch.h>

#include "model/gemma4_attention.h"
#include "model/gemma4_decoder_layer.h"

namespace gemma {

// layer(x, per_layer_input) as Gemma4DecoderLayerImpl::forward without a cache, checkpointed.
// With `keep_products` the forward also keeps its frozen projections' outputs, and the
// recomputation takes them instead of multiplying again (model/kept_products.h).
torch::Tensor checkpointed_layer_forward(Gemma4DecoderLayerImpl& layer, const torch::Tensor& x,
                                         const torch::Tensor& per_layer_input,
                                         const LayerTypeInputs& inputs, SharedKv& shared,
                                         bool keep_products = false);

}  // namespace gemma
