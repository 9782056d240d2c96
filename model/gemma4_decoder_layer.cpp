#include "model/gemma4_decoder_layer.h"

namespace gemma {

Gemma4DecoderLayerImpl::Gemma4DecoderLayerImpl(const Gemma4Config& c, int layer_index)
    : activation_(c.hidden_activation) {
  const Gemma4LayerSpec& spec = c.layers.at(layer_index);
  const int64_t H = c.hidden_size;
  const auto norm = [&](const char* name, int64_t dim) {
    return register_module(name, RmsNorm(RmsNormOptions(dim).eps(c.rms_norm_eps)));
  };
  self_attn = register_module(
      "self_attn", Gemma4Attention(Gemma4AttentionOptions{layer_index, H, c.num_attention_heads,
                                                          spec, c.rms_norm_eps}));
  mlp = register_module("mlp", Gemma4Mlp(H, spec.intermediate_size, c.hidden_activation));
  input_layernorm = norm("input_layernorm", H);
  post_attention_layernorm = norm("post_attention_layernorm", H);
  pre_feedforward_layernorm = norm("pre_feedforward_layernorm", H);
  post_feedforward_layernorm = norm("post_feedforward_layernorm", H);
  if (c.has_ple()) {
    const int64_t P = c.hidden_size_per_layer_input;
    per_layer_input_gate = register_module("per_layer_input_gate", Linear(H, P));
    per_layer_projection = register_module("per_layer_projection", Linear(P, H));
    post_per_layer_input_norm = norm("post_per_layer_input_norm", H);
  }
  if (c.enable_moe_block) {
    router =
        register_module("router", Gemma4Router(H, c.num_experts, c.top_k_experts, c.rms_norm_eps));
    experts = register_module(
        "experts", Gemma4Experts(c.num_experts, H, c.moe_intermediate_size, c.hidden_activation));
    post_feedforward_layernorm_1 = norm("post_feedforward_layernorm_1", H);
    post_feedforward_layernorm_2 = norm("post_feedforward_layernorm_2", H);
    pre_feedforward_layernorm_2 = norm("pre_feedforward_layernorm_2", H);
  }
  layer_scalar = register_buffer("layer_scalar", torch::ones({1}));
}

torch::Tensor Gemma4DecoderLayerImpl::feed_forward(const torch::Tensor& r) {
  torch::Tensor f = mlp(pre_feedforward_layernorm(r));
  if (experts) {
    // §2.6: the dense branch and the routed experts, each with its own norms; the router reads
    // the un-normalised residual.
    const torch::Tensor dense = post_feedforward_layernorm_1(f);
    const torch::Tensor flat = r.reshape({-1, r.size(-1)});
    const RouterChoice choice = router(flat);
    const torch::Tensor routed = post_feedforward_layernorm_2(
        experts(pre_feedforward_layernorm_2(flat), choice).view(r.sizes()));
    f = dense + routed;
  }
  return post_feedforward_layernorm(f);
}

torch::Tensor Gemma4DecoderLayerImpl::forward(const torch::Tensor& x_in,
                                              const torch::Tensor& per_layer_input,
                                              const LayerTypeInputs& inputs, SharedKv& shared,
                                              KvCache* cache) {
  // 1-3. attention with its pre- and post-norm, then the residual.
  torch::Tensor a = self_attn(input_layernorm(x_in), inputs, shared, cache);
  torch::Tensor x = x_in + post_attention_layernorm(a);
  // 4. feed-forward (dense, or dense + MoE) and its residual.
  x = x + feed_forward(x);
  // 5. per-layer embedding block.
  if (per_layer_input_gate) {
    torch::Tensor g = gemma4_activation(per_layer_input_gate(x), activation_) * per_layer_input;
    x = x + post_per_layer_input_norm(per_layer_projection(g));
  }
  // 6. the learned scalar scales the whole residual stream leaving the layer.
  return x * layer_scalar;
}

}  // namespace gemma
