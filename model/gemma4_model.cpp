#include "model/gemma4_model.h"

#include <cmath>

#include "kernels/bf16_matvec.h"
#include "model/activation_checkpointing.h"
#include "model/attention_mask.h"
#include "model/rotary_embedding.h"

namespace gemma {

EmbeddingTableImpl::EmbeddingTableImpl(int64_t rows, int64_t width) {
  weight = register_parameter("weight", torch::empty({rows, width}));
}

torch::Tensor EmbeddingTableImpl::lookup(const torch::Tensor& ids, const torch::Device& device) {
  const torch::Tensor flat = ids.reshape({-1}).to(weight.device());
  std::vector<int64_t> shape = ids.sizes().vec();
  shape.push_back(weight.size(1));
  if (weight.is_cpu() && device.is_cuda()) {
    // Pinned rows, so that the copy is a DMA that overlaps the work already queued on the
    // device; LibTorch's pinned allocator keeps the buffer until that copy has run.
    torch::Tensor rows =
        torch::empty({flat.size(0), weight.size(1)}, weight.options().pinned_memory(true));
    torch::index_select_out(rows, weight, 0, flat);
    return rows.view(shape).to(device, /*non_blocking=*/true);
  }
  return weight.index_select(0, flat).view(shape).to(device);
}

Gemma4TextModelImpl::Gemma4TextModelImpl(const Gemma4Config& config) : config_(config) {
  const Gemma4Config& c = config_;
  embed_tokens = register_module("embed_tokens", EmbeddingTable(c.vocab_size, c.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    layer_list_.push_back(Gemma4DecoderLayer(c, i));
    layers->push_back(layer_list_.back());
  }
  norm = register_module("norm", RmsNorm(RmsNormOptions(c.hidden_size).eps(c.rms_norm_eps)));
  if (c.has_ple()) {
    const int64_t width = c.num_hidden_layers * c.hidden_size_per_layer_input;
    embed_tokens_per_layer = register_module("embed_tokens_per_layer",
                                             EmbeddingTable(c.vocab_size_per_layer_input, width));
    per_layer_model_projection =
        register_module("per_layer_model_projection", Linear(c.hidden_size, width));
    per_layer_projection_norm =
        register_module("per_layer_projection_norm",
                        RmsNorm(RmsNormOptions(c.hidden_size_per_layer_input).eps(c.rms_norm_eps)));
  }
  for (const Gemma4LayerSpec& s : c.layers) {
    torch::Tensor& inv = s.type == LayerType::kSliding ? inv_freq_sliding_ : inv_freq_full_;
    if (!inv.defined()) inv = rope_inverse_frequencies(c.rope(s.type), s.head_dim);
  }
}

void Gemma4TextModelImpl::place_on(const torch::Device& device, bool ple_on_host) {
  for (auto& child : named_children()) {
    if (ple_on_host && child.key() == "embed_tokens_per_layer") continue;
    child.value()->to(device);
  }
}

torch::Tensor Gemma4TextModelImpl::per_layer_inputs(const torch::Tensor& ids,
                                                    const torch::Tensor& h0) {
  const Gemma4Config& c = config_;
  const int64_t L = c.num_hidden_layers, P = c.hidden_size_per_layer_input;
  const auto dtype = h0.scalar_type();
  // §2.2 a) token part: PLE rows × √P (rounded to the table's dtype, as transformers does).
  const torch::Tensor ple_scale =
      torch::tensor(std::sqrt(static_cast<double>(P)), torch::kFloat32).to(dtype).to(h0.device());
  torch::Tensor token_part = embed_tokens_per_layer->lookup(ids, h0.device()).to(dtype) * ple_scale;
  token_part = token_part.view({ids.size(0), ids.size(1), L, P});
  // b) context part from the already scaled embeddings.
  torch::Tensor context =
      per_layer_model_projection(h0) * (1.0 / std::sqrt(static_cast<double>(c.hidden_size)));
  context = per_layer_projection_norm(context.view({ids.size(0), ids.size(1), L, P}));
  // c) combined.
  return (context + token_part) * std::pow(2.0, -0.5);
}

torch::Tensor Gemma4TextModelImpl::forward(const Gemma4Input& input, KvCache* cache) {
  const Gemma4Config& c = config_;
  const torch::Tensor& ids = input.input_ids;
  const int64_t B = ids.size(0), T = ids.size(1);
  const torch::Device device = embed_tokens->weight.device();
  const auto dtype = embed_tokens->weight.scalar_type();
  const auto long_opts = torch::TensorOptions().dtype(torch::kInt64).device(device);

  const int64_t past = cache != nullptr ? cache->seen_tokens() : 0;
  const torch::Tensor valid = input.attention_mask.defined()
                                  ? input.attention_mask.to(device).to(torch::kBool)
                                  : torch::ones({B, T}, long_opts.dtype(torch::kBool));
  const torch::Tensor positions = input.position_ids.defined()
                                      ? input.position_ids.to(long_opts)
                                      : (torch::arange(past, past + T, long_opts)).expand({B, T});

  // §2.2: embeddings × √H rounded to the weight dtype.
  const torch::Tensor embed_scale =
      torch::tensor(std::sqrt(static_cast<double>(c.hidden_size)), torch::kFloat32)
          .to(dtype)
          .to(device);
  torch::Tensor h = embed_tokens->lookup(ids, device) * embed_scale;
  torch::Tensor ple;
  if (c.has_ple()) ple = per_layer_inputs(ids, h);

  // Masks and RoPE tables, one per layer type.
  const torch::Tensor query_index = torch::arange(past, past + T, long_opts);
  torch::Tensor segments;
  if (cache == nullptr && input.position_ids.defined()) segments = packed_document_ids(positions);
  LayerTypeInputs per_type[2];
  for (LayerType type : {LayerType::kSliding, LayerType::kFull}) {
    const torch::Tensor& inv = type == LayerType::kSliding ? inv_freq_sliding_ : inv_freq_full_;
    if (!inv.defined()) continue;
    const int64_t kept = cache != nullptr ? cache->kept_tokens(type) : 0;
    AttentionMaskSpec spec;
    spec.query_index = query_index;
    spec.key_index = torch::arange(past - kept, past + T, long_opts);
    spec.key_valid =
        kept > 0
            ? torch::cat({cache->key_valid().narrow(1, past - kept, kept).to(device), valid}, 1)
            : valid;
    spec.query_segment = segments;
    spec.key_segment = segments;
    if (type == LayerType::kSliding) spec.sliding_window = c.sliding_window;
    LayerTypeInputs& in = per_type[static_cast<int>(type)];
    in.mask = build_attention_mask(spec);
    in.rope = rope_tables(inv, positions, dtype);
  }

  SharedKv shared;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const torch::Tensor layer_ple = ple.defined() ? ple.select(2, i) : torch::Tensor();
    const LayerTypeInputs& inputs = per_type[static_cast<int>(c.layers[i].type)];
    if (gradient_checkpointing_ && cache == nullptr && torch::GradMode::is_enabled()) {
      h = checkpointed_layer_forward(*layer_list_[i], h, layer_ple, inputs, shared, keep_products_);
    } else {
      h = layer_list_[i]->forward(h, layer_ple, inputs, shared, cache);
    }
  }
  if (cache != nullptr) cache->commit(valid);
  return norm(h);
}

Gemma4ForCausalLMImpl::Gemma4ForCausalLMImpl(const Gemma4Config& config, bool untied_lm_head) {
  model = register_module("model", Gemma4TextModel(config));
  if (untied_lm_head || !config.tie_word_embeddings) {
    lm_head = register_module("lm_head", Linear(config.hidden_size, config.vocab_size));
  }
}

const torch::Tensor& Gemma4ForCausalLMImpl::lm_head_weight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

torch::Tensor Gemma4ForCausalLMImpl::logits(const torch::Tensor& hidden) {
  torch::Tensor out = few_rows_linear(hidden, lm_head_weight());
  if (const auto& cap = config().final_logit_softcapping) out = torch::tanh(out / *cap) * *cap;
  return out;
}

torch::Tensor Gemma4ForCausalLMImpl::forward(const Gemma4Input& input, KvCache* cache) {
  return logits(model->forward(input, cache));
}

void Gemma4ForCausalLMImpl::place_on(const torch::Device& device, bool ple_on_host) {
  model->place_on(device, ple_on_host);
  if (lm_head) lm_head->to(device);
}

torch::Device Gemma4ForCausalLMImpl::device() const { return model->embed_tokens->weight.device(); }
torch::ScalarType Gemma4ForCausalLMImpl::dtype() const {
  return model->embed_tokens->weight.scalar_type();
}

}  // namespace gemma
