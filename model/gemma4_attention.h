// Gemma4Attention: self-attention of one Gemma 4 decoder layer (gemma4-architecture.md §2.4, §2.5):
// QK-norm, weightless V-norm, scale 1.0, GQA, RoPE on Q and K only, K = V on full layers of
// attention_k_eq_v models, and KV sharing: a shared layer has only q_proj, q_norm and o_proj and
// attends over the K/V its source layer produced in the same forward (gradient flows back to it).
#pragma once

#include <map>

#include <torch/torch.h>

#include "model/gemma4_config.h"
#include "model/kv_cache.h"
#include "model/linear.h"
#include "model/rms_norm.h"
#include "model/rotary_embedding.h"

namespace gemma {

// Per-forward inputs that every layer of one type shares.
struct LayerTypeInputs {
  RopeTables rope;
  torch::Tensor mask;  // [B, 1, T, Tk] bool
};

// K/V that source layers hand to the KV-shared layers of the same forward, by source layer index.
using SharedKv = std::map<int, std::pair<torch::Tensor, torch::Tensor>>;

struct Gemma4AttentionOptions {
  int layer_index = 0;
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  Gemma4LayerSpec spec;
  double rms_norm_eps = 1e-6;
  AttentionImplementation implementation = AttentionImplementation::kSdpa;
};

class Gemma4AttentionImpl : public torch::nn::Module {
 public:
  explicit Gemma4AttentionImpl(const Gemma4AttentionOptions& options);

  // h [B, T, H] (already input-normed) -> [B, T, H].
  torch::Tensor forward(const torch::Tensor& h, const LayerTypeInputs& inputs, SharedKv& shared,
                        KvCache* cache);

  const Gemma4AttentionOptions& options() const { return options_; }

  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RmsNorm q_norm{nullptr}, k_norm{nullptr}, v_norm{nullptr};

 private:
  Gemma4AttentionOptions options_;
};
TORCH_MODULE(Gemma4Attention);

// Eager attention as transformers computes it: scores in the activation dtype, masked and
// softmaxed in float32, KV heads repeated to the query heads. q [B, nH, T, d], k/v
// [B, kH, Tk, d], mask [B, 1, T, Tk] bool -> [B, nH, T, d].
torch::Tensor eager_attention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& mask, double scaling);

// The same through LibTorch's scaled_dot_product_attention (a fused kernel: the scores are never
// materialised, the softmax is accumulated in float32 from unrounded scores, so in bf16 it is
// closer to the float64 result than eager is). A query row that sees no key gets the mean of V,
// as in eager. Taken for float32/bf16/fp16 when the model's implementation is kSdpa; float64
// (the reference tests' dtype) stays eager.
torch::Tensor fused_attention(const torch::Tensor& q, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& mask, double scaling);
bool fused_attention_applies(const torch::Tensor& q);

}  // namespace gemma
