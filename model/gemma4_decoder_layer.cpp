#include "model/gemma4_decoder_layer.h"

#include "model/forward_trace.h"

namespace gemma {

Gemma4DecoderLayerImpl::Gemma4DecoderLayerImpl(const Gemma4Config& c, int layer_index)
    : activation_(c.hidden_activation), layer_index_(layer_index) {
  const Gemma4LayerSpec& spec = c.layers.at(layer_index);
  const int64_t H = c.hidden_size;
  const auto norm = [&](const char* name, int64_t dim) {
    return register_module(name, RmsNorm(RmsNormOptions(dim).eps(c.rms_norm_eps)));
  };
  self_attn = register_module("self_attn", Gemma4Attention(Gemma4AttentionOptions{
                                               layer_index, H, c.num_attention_heads, spec,
                                               c.rms_norm_eps, c.attn_implementation}));
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
  const int64_t il = layer_index_;
  const torch::Tensor ffn_norm = pre_feedforward_layernorm(r);
  trace_step(ffn_norm, "ffn_norm", il);
  torch::Tensor f = mlp(ffn_norm);
  trace_step(f, "ffn_out", il);
  if (experts) {
    // §2.6: the dense branch and the routed experts, each with its own norms; the router reads
    // the un-normalised residual.
    const torch::Tensor dense = post_feedforward_layernorm_1(f);
    const torch::Tensor flat = r.reshape({-1, r.size(-1)});
    const RouterChoice choice = router(flat);
    trace_step(choice.weights, "ffn_moe_weights", il);
    const torch::Tensor routed = post_feedforward_layernorm_2(
        experts(pre_feedforward_layernorm_2(flat), choice).view(r.sizes()));
    trace_step(routed, "ffn_moe_out", il);
    f = dense + routed;
  }
  return post_feedforward_layernorm(f);
}

torch::Tensor Gemma4DecoderLayerImpl::forward(const torch::Tensor& x_in,
                                              const torch::Tensor& per_layer_input,
                                              const LayerTypeInputs& inputs, SharedKv& shared,
                                              KvCache* cache) {
  const int64_t il = layer_index_;
  trace_step(x_in, "layer_in", il);
  // 1-3. attention with its pre- and post-norm, then the residual.
  const torch::Tensor attn_norm = input_layernorm(x_in);
  trace_step(attn_norm, "attn_norm", il);
  torch::Tensor a = self_attn(attn_norm, inputs, shared, cache);
  trace_step(a, "attn_out", il);
  torch::Tensor x = x_in + post_attention_layernorm(a);
  trace_step(x, "attn_residual", il);
  // 4. feed-forward (dense, or dense + MoE) and its residual.
  const torch::Tensor ffn = feed_forward(x);
  trace_step(ffn, "ffn_post_norm", il);
  x = x + ffn;
  trace_step(x, "ffn_residual", il);
  // 5. per-layer embedding block.
  if (per_layer_input_gate) {
    torch::Tensor g = gemma4_activation(per_layer_input_gate(x), activation_) * per_layer_input;
    trace_step(g, "ple_gate", il);
    x = x + post_per_layer_input_norm(per_layer_projection(g));
    trace_step(x, "ple_residual", il);
  }
  // 6. the learned scalar scales the whole residual stream leaving the layer.
  x = x * layer_scalar;
  trace_step(x, "layer_out", il);
  return x;
}

}  // namespace gemma
