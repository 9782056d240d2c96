// KvCache: keys and values of past tokens for step-by-step decoding (gemma4-architecture.md
// §5.3). One entry per non-shared layer (KV-shared layers read their source layer's entry);
// sliding layers keep only their last W-1 tokens, the most a later query can see. Keys are stored
// after RoPE, so positions must stay absolute and increasing across calls.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "model/gemma4_config.h"

namespace gemma {

class KvCache {
 public:
  explicit KvCache(const Gemma4Config& config);

  // Tokens already committed (the sequence index of the next token).
  int64_t seen_tokens() const { return seen_; }
  // Tokens kept by a layer of type `type` before the current step.
  int64_t kept_tokens(LayerType type) const;
  // [B, seen] bool padding flags of every committed token (undefined before the first step).
  const torch::Tensor& key_valid() const { return key_valid_; }

  // Appends one step's K/V [B, kv_heads, T, head_dim] of `layer` and returns the keys and values
  // the step attends to: the kept past followed by the new tokens. Sliding layers then drop what
  // no later query can see.
  std::pair<torch::Tensor, torch::Tensor> append(int layer, const torch::Tensor& k,
                                                 const torch::Tensor& v);

  // Ends a step of `valid.size(1)` tokens; `valid` [B, T] marks its real (non-padding) tokens.
  void commit(const torch::Tensor& valid);

  // Bytes held by all entries.
  int64_t nbytes() const;

 private:
  struct Entry {
    torch::Tensor k, v;
  };
  std::vector<Gemma4LayerSpec> layers_;
  int64_t sliding_window_;
  std::vector<Entry> entries_;
  torch::Tensor key_valid_;
  int64_t seen_ = 0;
};

}  // namespace gemma
