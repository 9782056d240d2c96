#include "model/gemma4_attention.h"

#include <limits>

namespace gemma {

namespace {

torch::Tensor repeat_kv(const torch::Tensor& x, int64_t groups) {
  if (groups == 1) return x;
  const auto s = x.sizes();
  return x.unsqueeze(2)
      .expand({s[0], s[1], groups, s[2], s[3]})
      .reshape({s[0], s[1] * groups, s[2], s[3]});
}

}  // namespace

torch::Tensor eager_attention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& mask, double scaling) {
  const int64_t groups = q.size(1) / k.size(1);
  torch::Tensor scores = torch::matmul(q, repeat_kv(k, groups).transpose(2, 3));
  if (scaling != 1.0) scores = scores * scaling;
  const auto fp = q.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  // A large finite value rather than -inf: a fully masked (padding) row stays finite (§5.1).
  scores = scores.to(fp).masked_fill(mask.logical_not(), std::numeric_limits<float>::lowest());
  const torch::Tensor probs = torch::softmax(scores, -1).to(q.scalar_type());
  return torch::matmul(probs, repeat_kv(v, groups));
}

torch::Tensor fused_attention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& mask, double scaling) {
  torch::Tensor out = at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0,
                                                       /*is_causal=*/false, scaling,
                                                       /*enable_gqa=*/q.size(1) != k.size(1));
  // A query that sees no key (left padding) gets 0 from the fused kernel; eager attention, whose
  // scores are all the same large negative value there, gives the mean of V over every key.
  // Give it that too, so that both compute the same outputs and gradients everywhere.
  const torch::Tensor sees_a_key = mask.any(-1, /*keepdim=*/true);  // [B, 1, T, 1]
  if (sees_a_key.is_cpu() && sees_a_key.all().item<bool>()) return out;
  const int64_t groups = q.size(1) / k.size(1);
  const torch::Tensor mean_v = repeat_kv(v.mean(2, /*keepdim=*/true), groups);  // [B, nH, 1, d]
  return torch::where(sees_a_key, out, mean_v.to(out.scalar_type()));
}

bool fused_attention_applies(const torch::Tensor& q) {
  return q.scalar_type() == torch::kFloat32 || q.scalar_type() == torch::kBFloat16 ||
         q.scalar_type() == torch::kFloat16;
}

Gemma4AttentionImpl::Gemma4AttentionImpl(const Gemma4AttentionOptions& options)
    : options_(options) {
  const Gemma4LayerSpec& s = options.spec;
  const int64_t H = options.hidden_size;
  q_proj = register_module("q_proj", Linear(H, options.num_heads * s.head_dim));
  q_norm = register_module("q_norm", RmsNorm(RmsNormOptions(s.head_dim).eps(options.rms_norm_eps)));
  if (!s.kv_shared) {
    k_proj = register_module("k_proj", Linear(H, s.num_kv_heads * s.head_dim));
    if (s.has_v_proj) v_proj = register_module("v_proj", Linear(H, s.num_kv_heads * s.head_dim));
    k_norm =
        register_module("k_norm", RmsNorm(RmsNormOptions(s.head_dim).eps(options.rms_norm_eps)));
    v_norm = register_module(
        "v_norm", RmsNorm(RmsNormOptions(s.head_dim).eps(options.rms_norm_eps).with_scale(false)));
  }
  o_proj = register_module("o_proj", Linear(options.num_heads * s.head_dim, H));
}

torch::Tensor Gemma4AttentionImpl::forward(const torch::Tensor& h, const LayerTypeInputs& inputs,
                                           SharedKv& shared, KvCache* cache) {
  const Gemma4LayerSpec& s = options_.spec;
  const int64_t B = h.size(0), T = h.size(1), d = s.head_dim;

  // 1. q = RoPE(q_norm(q_proj(h)))
  torch::Tensor q = q_proj(h).view({B, T, -1, d});
  q = apply_rope(q_norm(q), inputs.rope).transpose(1, 2);

  torch::Tensor key, value;
  if (s.kv_shared) {
    // §2.5: the source layer's final K/V of this forward (after its cache update).
    std::tie(key, value) = shared.at(s.kv_source);
  } else {
    // 2. raw K and V; V is the raw K projection when the layer has no v_proj (K = V).
    const torch::Tensor k_raw = k_proj(h).view({B, T, -1, d});
    const torch::Tensor v_raw = v_proj ? v_proj(h).view({B, T, -1, d}) : k_raw;
    // 3. key = RoPE(k_norm(k)), value = v_norm(v) without RoPE.
    key = apply_rope(k_norm(k_raw), inputs.rope).transpose(1, 2);
    value = v_norm(v_raw).transpose(1, 2);
    if (cache != nullptr) std::tie(key, value) = cache->append(options_.layer_index, key, value);
    if (s.stores_kv) shared[options_.layer_index] = {key, value};
  }

  // 4-6. scores with scaling 1.0 (the QK norms take its place), mask, fp32 softmax.
  const torch::Tensor out =
      options_.implementation == AttentionImplementation::kSdpa && fused_attention_applies(q)
          ? fused_attention(q, key, value, inputs.mask, /*scaling=*/1.0)
          : eager_attention(q, key, value, inputs.mask, /*scaling=*/1.0);
  // 7. heads back to [B, T, nH·d], then o_proj.
  return o_proj(out.transpose(1, 2).reshape({B, T, -1}));
}

}  // namespace gemma
