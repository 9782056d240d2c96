// KvCache: keys and values of past tokens for step-by-step decoding (gemma4-architecture.md
// §5.3). One entry per non-shared layer (KV-shared layers read their source layer's entry);
// sliding layers keep only their last W-1 tokens, the most a later query can see. Keys are stored
// after RoPE, so positions must stay absolute and increasing across calls.
// Each entry is a buffer with room to spare ([B, kv_heads, capacity, head_dim]) holding its kept
// tokens at slots [begin, begin + length): a step writes its tokens after them, so decoding copies
// each token once (a full buffer doubles; a sliding layer's moves its kept tokens back to the
// front now and then, amortised to one token a step).
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
  torch::Tensor key_valid() const;

  // Appends one step's K/V [B, kv_heads, T, head_dim] of `layer` and returns the keys and values
  // the step attends to (views of the buffer): the kept past followed by the new tokens. Sliding
  // layers then drop what no later query can see.
  std::pair<torch::Tensor, torch::Tensor> append(int layer, const torch::Tensor& k,
                                                 const torch::Tensor& v);

  // Ends a step of `valid.size(1)` tokens; `valid` [B, T] marks its real (non-padding) tokens.
  void commit(const torch::Tensor& valid);

  // Bytes held by all entries' buffers.
  int64_t nbytes() const;

  // --- Direct access for the step decoder (model/gemma4_step_decoder.h), which writes a step's
  // K/V itself: reserve(T), write each non-shared layer's T tokens at slots
  // [begin + length, begin + length + T), attend over [begin, begin + length + T), then
  // advance(T) and commit(valid).
  struct Entry {
    torch::Tensor k, v;  // [B, kv_heads, capacity, head_dim]
    int64_t begin = 0, length = 0;
  };
  // Room for `tokens` more slots after the kept ones in every entry (entries must exist: a
  // first step goes through append).
  void reserve(int64_t tokens);
  // The entry of non-shared layer `layer`.
  const Entry& entry(int layer) const { return entries_.at(layer); }
  // Every entry now also keeps the `tokens` slots written after its kept ones.
  void advance(int64_t tokens);
  // The committed tokens' padding flags: [B, row stride] bool, the first seen_tokens() of a row
  // in use.
  const bool* key_valid_data() const { return key_valid_.data_ptr<bool>(); }
  int64_t key_valid_stride() const { return key_valid_.size(1); }

 private:
  void make_room(Entry& e, int64_t tokens, const torch::Tensor& like);
  void keep_after_step(int layer, int64_t tokens);

  std::vector<Gemma4LayerSpec> layers_;
  int64_t sliding_window_;
  std::vector<Entry> entries_;
  torch::Tensor key_valid_;  // [B, capacity] bool
  int64_t seen_ = 0;
};

}  // namespace gemma
