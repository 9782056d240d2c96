// adapter_config.json, PEFT 0.21.2's LoraConfig as a file: read into an AdapterSpec, and written
// from one. No LibTorch: the fuzz target and the recipe checks read configs without the model;
// the tensors beside it are peft_adapter.h's.
#pragma once

#include <filesystem>
#include <string>

#include "peft/adapter_spec.h"

namespace gemma {

constexpr const char* kPeftAdapterConfigFile = "adapter_config.json";

// The options and targets of `dir`/adapter_config.json. Every key of PEFT 0.21.2's LoraConfig is
// either read as PEFT reads it (r, lora_alpha, lora_dropout, target_modules, use_rslora, use_dora,
// init_lora_weights, bias "none"), has no effect on stored weights (bookkeeping, settings of fresh
// initialisation, fan_in_fan_out on Linear layers), or is refused by name unless it holds its
// off value (layers_to_transform, rank_pattern, modules_to_save, lora_bias, LoRA variants, ...);
// a key PEFT 0.21.2 does not know passes only when null, false or empty. InputError naming the
// file and the key otherwise, and for a string target_modules RE2 cannot compile
// (target_regex.h).
AdapterSpec read_peft_adapter_config(const std::filesystem::path& dir);

// The adapter_config.json gemma-train writes for `spec` (keys sorted, as PEFT writes them; only
// long-standing keys, since older PEFT refuses unknown ones), with its trailing newline.
std::string peft_adapter_config_text(const AdapterSpec& spec, const std::string& base_model_name);

}  // namespace gemma
