// PEFT adapter folders (qlora-formats.md §3.1-3.2): `adapter_config.json` +
// `adapter_model.safetensors` with keys `base_model.model.<module path>.lora_A.weight`,
// `.lora_B.weight` and
// `.lora_magnitude_vector` (DoRA), the module path spelt as the base checkpoint spells it. PEFT
// loads ours onto the same base, and we load PEFT's.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "model/gemma4_model.h"
#include "peft/lora_adapters.h"
#include "peft/peft_adapter_config.h"

namespace gemma {

// PEFT's key prefix in adapter_model.safetensors.
constexpr const char* kPeftPrefix = "base_model.model.";

// One adapted module's tensors from adapter_model.safetensors.
struct AdapterTensors {
  torch::Tensor lora_A;     // [r, in]
  torch::Tensor lora_B;     // [out, r]
  torch::Tensor magnitude;  // [out], DoRA only
};

// The one reader of PEFT adapter folders (attaching to a model and merging both use it): a folder
// read without a model: its options and, per base weight key
// ("model.language_model.layers.0.self_attn.q_proj.weight"), its tensors.
struct PeftAdapterFiles {
  AdapterSpec spec;  // adapter_config.json
  std::map<std::string, AdapterTensors> by_weight_key;
};
// InputError naming the file for a key that is not a PEFT LoRA/DoRA tensor, is not floating or
// holds NaN or Inf.
PeftAdapterFiles read_peft_adapter_files(const std::filesystem::path& dir);

// Whether an adapter's module path (without kPeftPrefix) belongs to another tower of a multimodal
// checkpoint (vision, audio): adapters trained on Gemma4ForConditionalGeneration with plain names
// like "q_proj" carry those too, and a text model has nothing for them.
bool is_other_tower_module(const std::string& module_path, const std::string& prefix);
// An adapter's text-decoder module path as a checkpoint with decoder prefix `prefix` spells it:
// adapters trained on Gemma4ForCausalLM ("model.layers.3...") and on
// Gemma4ForConditionalGeneration ("model.language_model.layers.3...") both fit either checkpoint.
std::string text_module_in_checkpoint(const std::string& module_path, const std::string& prefix);
// `dir`/adapter_model.safetensors.
std::filesystem::path peft_adapter_weights_file(const std::filesystem::path& dir);

// Writes adapter_config.json and adapter_model.safetensors of `model`'s adapters into the existing
// folder `dir` (each file atomically; a checkpoint or a run's output_dir).
void write_peft_adapter_files(Gemma4ForCausalLM& model, const AdapterSpec& spec,
                              const std::string& prefix, const std::string& base_model_name,
                              const std::filesystem::path& dir);
// Writes the adapters of `model` (attached with `spec`) as a new folder `out_dir`. `prefix` is the
// base checkpoint's decoder prefix (Gemma4LoadReport::prefix).
void save_peft_adapter(Gemma4ForCausalLM& model, const AdapterSpec& spec, const std::string& prefix,
                       const std::string& base_model_name, const std::filesystem::path& out_dir);

// Attaches the adapters described in `dir` to `model` and loads their weights (those of other
// towers are skipped). InputError for an adapter of another base (a key naming no module here), a
// rank mismatch, or a missing tensor.
AdapterSpec load_peft_adapter(Gemma4ForCausalLM& model, const std::string& prefix,
                              const std::filesystem::path& dir);

}  // namespace gemma
