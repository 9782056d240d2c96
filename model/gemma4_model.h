// Gemma4TextModel and Gemma4ForCausalLM: the Gemma 4 text decoder (gemma4-architecture.md §2).
// Registered names are the Hugging Face checkpoint's (`embed_tokens`, `layers.3.self_attn.q_proj`,
// ...), so named_parameters() + named_buffers() is the state dict up to the checkpoint's prefix.
// The PLE table (`embed_tokens_per_layer`) stays in host memory unless placed on the device
// (place_on's ple_on_host): only the rows a batch looks up travel to the compute device.
#pragma once

#include <torch/torch.h>

#include "model/gemma4_config.h"
#include "model/gemma4_decoder_layer.h"
#include "model/kv_cache.h"
#include "model/linear.h"
#include "model/rms_norm.h"

namespace gemma {

// A [rows, width] lookup table registered as `weight`.
class EmbeddingTableImpl : public torch::nn::Module {
 public:
  EmbeddingTableImpl(int64_t rows, int64_t width);
  // ids [B, T] (any device) -> rows [B, T, width] on `device`. A table in host memory serving a
  // CUDA device gathers the rows into pinned memory and copies only them, asynchronously.
  torch::Tensor lookup(const torch::Tensor& ids, const torch::Device& device);
  torch::Tensor weight;
};
TORCH_MODULE(EmbeddingTable);

struct Gemma4Input {
  torch::Tensor input_ids;       // [B, T] int64
  torch::Tensor attention_mask;  // [B, T], 1 for real tokens; undefined = all real
  torch::Tensor position_ids;    // [B, T]; undefined = past + 0..T-1. Restarting positions mark
                                 // packed documents (block-diagonal mask), without a cache.
};

class Gemma4TextModelImpl : public torch::nn::Module {
 public:
  explicit Gemma4TextModelImpl(const Gemma4Config& config);

  // Final-normed hidden states [B, T, H]. With `cache`, attends over its past and appends.
  torch::Tensor forward(const Gemma4Input& input, KvCache* cache = nullptr);

  // Moves everything to `device`, the PLE table too unless `ple_on_host` (then it stays where it
  // was loaded: host memory, often the file's read-only mapping; only looked-up rows cross).
  void place_on(const torch::Device& device, bool ple_on_host = true);

  // Recompute each decoder layer in backward instead of keeping its activations (training
  // without a cache only; a forward with a cache or without gradients runs plainly).
  // With `keep_products`, each checkpointed layer also keeps its frozen projections' outputs,
  // so the recomputation skips those matmuls (model/kept_products.h).
  void set_gradient_checkpointing(bool on, bool keep_products = false) {
    gradient_checkpointing_ = on;
    keep_products_ = keep_products;
  }

  const Gemma4Config& config() const { return config_; }

  EmbeddingTable embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RmsNorm norm{nullptr};
  EmbeddingTable embed_tokens_per_layer{nullptr};  // PLE models; host memory by default
  Linear per_layer_model_projection{nullptr};
  RmsNorm per_layer_projection_norm{nullptr};

 private:
  torch::Tensor per_layer_inputs(const torch::Tensor& ids, const torch::Tensor& h0);

  Gemma4Config config_;
  std::vector<Gemma4DecoderLayer> layer_list_;
  torch::Tensor inv_freq_sliding_, inv_freq_full_;
  bool gradient_checkpointing_ = false;
  bool keep_products_ = false;
};
TORCH_MODULE(Gemma4TextModel);

class Gemma4ForCausalLMImpl : public torch::nn::Module {
 public:
  // `untied_lm_head`: the checkpoint carries its own lm_head.weight.
  explicit Gemma4ForCausalLMImpl(const Gemma4Config& config, bool untied_lm_head = false);

  // Logits [B, T, V] after the final softcap.
  torch::Tensor forward(const Gemma4Input& input, KvCache* cache = nullptr);
  // lm_head + softcap on final hidden states [.., H].
  torch::Tensor logits(const torch::Tensor& hidden);
  const torch::Tensor& lm_head_weight() const;

  void place_on(const torch::Device& device, bool ple_on_host = true);
  torch::Device device() const;
  torch::ScalarType dtype() const;
  const Gemma4Config& config() const { return model->config(); }

  Gemma4TextModel model{nullptr};
  Linear lm_head{nullptr};  // only when untied
};
TORCH_MODULE(Gemma4ForCausalLM);

}  // namespace gemma
