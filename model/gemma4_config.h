// Gemma4Config: the Gemma 4 text decoder's settings, read from a Hugging Face config.json
// (multimodal form with `text_config`, or the text-only form; flat `global_head_dim` /
// `num_global_key_value_heads` or the newer `per_layer_config`), and the per-layer geometry
// derived from them once (gemma4-architecture.md §1, §2.4, §2.5). Modules read the geometry;
// they never re-derive it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace gemma {

// Bounds on config.json, checked by finalize() before anything is sized from the config, so an
// absurd value is one InputError naming its key rather than a failed allocation, an int64
// overflow or NaN. Each leaves wide margin over the released variants (gemma4-architecture.md
// §1.3), shown in the last column. Keys marked "if used" are checked only when the config uses
// them (MoE keys with enable_moe_block, PLE keys with hidden_size_per_layer_input > 0,
// num_global_key_value_heads with attention_k_eq_v); "even" and "dividing" are checked on the
// head_dim and num_key_value_heads each layer ends up with (after per_layer_config).
//
//   key                                           allowed                        released
//   hidden_size                                   [1, 2^20]                      1536..5376
//   intermediate_size                             [1, 2^20]                      2112..21504
//   moe_intermediate_size (if used)               [1, 2^20]                      704
//   hidden_size_per_layer_input                   [0, 2^20] (0: no PLE)          0, 256
//   head_dim, global_head_dim,                    even, [2, 2^16]                256, 512
//     per_layer_config[i].head_dim
//   num_hidden_layers                             [1, 1024]                      30..60
//   num_attention_heads                           [1, 1024]                      8..32
//   num_key_value_heads, num_global_key_value_    [1, 1024], dividing            1..16
//     heads (if used), per_layer_config[i].         num_attention_heads
//     num_key_value_heads
//   num_kv_shared_layers                          [0, num_hidden_layers)         0..20
//   num_experts (if used)                         [1, 2^16]                      128
//   top_k_experts (if used)                       [1, num_experts]               8
//   vocab_size                                    [1, 2^24]                      262144
//   vocab_size_per_layer_input (if used)          [1, 2^24]                      262144
//   max_position_embeddings                       [1, 2^24]                      131072, 262144
//   sliding_window                                [1, 2^24]                      512, 1024
//   pad_token_id, bos_token_id                    [0, vocab_size)                0, 2
//   eos_token_id (each)                           >= 0 (only compared)           1
//   rms_norm_eps                                  finite, [FLT_MIN, 1]           1e-6
//   initializer_range                             finite, >= 0                   0.02
//   final_logit_softcapping,                      null/absent, or finite > 0     30, null
//     attn_logit_softcapping (read, never used:
//     Gemma 4 has none, as in transformers)
//   rope_parameters.*.rope_theta, .factor         finite, > 0                    1e4, 1e6; 1
//   rope_parameters.*.partial_rotary_factor       (0, 1]                         0.25
//
// Products that size one tensor or activation:
//   num_attention_heads * head_dim (per layer)    <= 2^20 (q/o width)            16384
//   every checkpoint tensor (vocab_size *         <= 2^36 elements, in int64     1.4e9 ~ 2^30.4
//     hidden_size, intermediate_size *            with checked multiplication;   (embed_tokens
//     hidden_size, the PLE table, experts, ...)   128 GiB in bf16, more than     of 31B)
//                                                 one GPU holds
// With these, a parameter count (at most ~25 tensors per layer, 1024 layers) stays below 2^52:
// int64 sums of them cannot overflow.
constexpr int64_t kMaxConfigWidth = int64_t{1} << 20;
constexpr int64_t kMaxConfigHeadDim = int64_t{1} << 16;
constexpr int64_t kMaxConfigLayers = 1024;
constexpr int64_t kMaxConfigHeads = 1024;
constexpr int64_t kMaxConfigExperts = int64_t{1} << 16;
constexpr int64_t kMaxConfigVocab = int64_t{1} << 24;
constexpr int64_t kMaxConfigPositions = int64_t{1} << 24;
constexpr int64_t kMaxConfigTensorElements = int64_t{1} << 36;

enum class LayerType { kSliding, kFull };

struct RopeSpec {
  std::string rope_type = "default";  // "default" or "proportional"
  double rope_theta = 10000.0;
  double partial_rotary_factor = 1.0;  // proportional only
  double factor = 1.0;                 // proportional only: linear position scaling
};

// Everything a layer needs to build itself, fixed at construction (style.md §2).
struct Gemma4LayerSpec {
  LayerType type = LayerType::kSliding;
  int64_t head_dim = 0;
  int64_t num_kv_heads = 0;
  bool has_v_proj = true;  // false on full layers when attention_k_eq_v
  bool kv_shared = false;  // reads K/V of `kv_source` instead of projecting its own
  int kv_source = -1;      // for shared layers: the last non-shared layer of the same type
  bool stores_kv = false;  // a non-shared layer whose K/V some shared layer reads
  int64_t intermediate_size = 0;
};

// transformers' attn_implementation: "sdpa" (its default, and ours) or "eager".
enum class AttentionImplementation { kSdpa, kEager };
// "sdpa" or "eager"; anything else is an InputError naming `where`.
AttentionImplementation attention_implementation_from_name(const std::string& name,
                                                           const std::string& where);

struct Gemma4Config {
  int64_t vocab_size = 262144;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t global_head_dim = 512;
  std::optional<int64_t> num_global_key_value_heads;
  bool attention_k_eq_v = false;
  std::string hidden_activation = "gelu_pytorch_tanh";
  int64_t max_position_embeddings = 131072;
  double rms_norm_eps = 1e-6;
  double initializer_range = 0.02;
  int64_t pad_token_id = 0;
  int64_t bos_token_id = 2;
  std::vector<int64_t> eos_token_ids = {1};
  bool tie_word_embeddings = true;
  RopeSpec rope_sliding;
  RopeSpec rope_full{"proportional", 1e6, 0.25, 1.0};
  int64_t sliding_window = 512;
  std::vector<LayerType> layer_types;
  std::optional<double> final_logit_softcapping;
  std::optional<std::string> use_bidirectional_attention;
  int64_t vocab_size_per_layer_input = 262144;
  int64_t hidden_size_per_layer_input = 256;
  int64_t num_kv_shared_layers = 0;
  bool use_double_wide_mlp = false;
  bool enable_moe_block = false;
  int64_t num_experts = 0;
  int64_t top_k_experts = 0;
  int64_t moe_intermediate_size = 0;
  // Per-layer overrides of head_dim / num_key_value_heads (the `per_layer_config` form).
  std::vector<std::optional<int64_t>> head_dim_override;
  std::vector<std::optional<int64_t>> kv_heads_override;

  // How attention is computed; chosen when the model is built, never read from config.json.
  AttentionImplementation attn_implementation = AttentionImplementation::kSdpa;

  std::vector<Gemma4LayerSpec> layers;  // derived by finalize()

  bool has_ple() const { return hidden_size_per_layer_input > 0; }
  int64_t first_kv_shared_layer() const { return num_hidden_layers - num_kv_shared_layers; }
  const RopeSpec& rope(LayerType t) const {
    return t == LayerType::kSliding ? rope_sliding : rope_full;
  }

  // Checks every value against the bounds above, fills defaults (layer_types, last layer forced
  // full) and derives `layers`; throws InputError naming `where` and the key when a value is out
  // of bounds or the settings contradict each other.
  void finalize(const std::string& where);
};

// Parses a config.json text. `where` names the file in error messages.
Gemma4Config parse_gemma4_config(const std::string& json_text, const std::string& where);
Gemma4Config load_gemma4_config(const std::string& path);

// config.json text for a checkpoint: the multimodal `Gemma4ForConditionalGeneration` form (decoder
// settings under text_config), or with `text_only` the flat `Gemma4ForCausalLM` form.
// `dtype` is "bfloat16" or "float32".
std::string gemma4_config_to_json(const Gemma4Config& config, bool text_only,
                                  const std::string& dtype);

// The configs bundled with the binary (configs/*.json): the four released variants and the small
// test/demo/bench configs. `name` is case-insensitive ("e4b", "26b-a4b", "tiny-e2b", ...).
std::optional<std::string> bundled_config_json(const std::string& name);
std::vector<std::string> bundled_config_names();

}  // namespace gemma
