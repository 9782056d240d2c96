// Attaching LoRA/DoRA adapters to a Gemma4ForCausalLM by module path (style.md §5): a walk over
// named_modules() finds the target projections, each gets its adapter, everything else is frozen.
// Targets never include what does not exist: KV-shared layers have no k/v projections and the full
// layers of K = V models no v_proj, so neither is ever adapted.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "model/gemma4_model.h"
#include "model/linear.h"
#include "peft/adapter_spec.h"
#include "peft/lora_linear.h"

namespace gemma {

class TargetRegex;

// PEFT's target test for a module path: the whole path matches `pattern` when given, else the
// path equals a target_modules entry or ends in "." + entry.
bool is_adapter_target(const std::string& path, const AdapterSpec& spec,
                       const TargetRegex* pattern);

// The projections of `model` (every Linear, with its module path), in model order; never an
// adapter's own matrices.
std::vector<std::pair<std::string, LinearImpl*>> projections(Gemma4ForCausalLM& model);

// The attached LoRA/DoRA adapters, by the path of the projection they adapt.
std::vector<std::pair<std::string, LoraLinearImpl*>> lora_adapters(Gemma4ForCausalLM& model);

// Returns the module paths that got an adapter, in model order.
std::vector<std::string> attach_adapters(Gemma4ForCausalLM& model, const AdapterSpec& spec);

// The adapter parameters by name (the only ones that require grad after attach_adapters).
std::vector<std::pair<std::string, torch::Tensor>> trainable_parameters(Gemma4ForCausalLM& model);

// While alive, every adapter is off: the model computes as its base (DPO/KTO's reference model,
// without a second copy of the weights).
class AdaptersDisabled {
 public:
  explicit AdaptersDisabled(Gemma4ForCausalLM& model);
  ~AdaptersDisabled();
  AdaptersDisabled(const AdaptersDisabled&) = delete;
  AdaptersDisabled& operator=(const AdaptersDisabled&) = delete;

 private:
  std::vector<LoraLinearImpl*> adapters_;
};

}  // namespace gemma
