// What an adapter is, apart from its tensors: the LoRA/DoRA options and the modules it targets,
// as a PEFT LoraConfig holds them. No LibTorch here: the adapter_config.json reader and the
// recipe use it without the model.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace gemma {

struct LoraOptions {
  int64_t r = 8;
  double alpha = 8.0;
  double dropout = 0.0;
  bool use_rslora = false;  // scaling alpha/√r instead of alpha/r
  bool use_dora = false;
  // PEFT's init_lora_weights: true starts B at zero (the model unchanged); false leaves B random
  // as well, U(±1/√r), which PEFT offers for tests.
  bool init_lora_weights = true;
  double scaling() const {
    return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
  }
};

struct AdapterSpec {
  LoraOptions lora;
  // PEFT's matching: a module path equal to an entry or ending in "." + entry ...
  std::vector<std::string> target_modules = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
  // ... or, when set, a regular expression that must match the whole path (re.fullmatch, in
  // RE2's linear time: target_regex.h).
  std::string target_regex;
  uint64_t seed = 0;
};

}  // namespace gemma
