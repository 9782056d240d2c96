#include "peft/lora_adapters.h"

#include <optional>

#include "io/input_error.h"
#include "peft/target_regex.h"

namespace gemma {

bool is_adapter_target(const std::string& path, const AdapterSpec& spec,
                       const TargetRegex* pattern) {
  if (pattern) return pattern->full_match(path);
  for (const std::string& t : spec.target_modules) {
    if (path == t || (path.size() > t.size() &&
                      path.compare(path.size() - t.size() - 1, t.size() + 1, "." + t) == 0)) {
      return true;
    }
  }
  return false;
}

std::vector<std::pair<std::string, LinearImpl*>> projections(Gemma4ForCausalLM& model) {
  std::vector<std::pair<std::string, LinearImpl*>> out;
  for (const auto& m : model->named_modules()) {
    if (auto* linear = m.value()->as<LinearImpl>()) out.emplace_back(m.key(), linear);
  }
  return out;
}

std::vector<std::pair<std::string, LoraLinearImpl*>> lora_adapters(Gemma4ForCausalLM& model) {
  std::vector<std::pair<std::string, LoraLinearImpl*>> out;
  for (const auto& [path, linear] : projections(model)) {
    if (LoraLinearImpl* lora = lora_of(*linear)) out.emplace_back(path, lora);
  }
  return out;
}

std::vector<std::string> attach_adapters(Gemma4ForCausalLM& model, const AdapterSpec& spec) {
  std::optional<TargetRegex> pattern;
  if (!spec.target_regex.empty()) pattern.emplace(spec.target_regex, "target_modules");
  // Collect first: attaching registers new submodules, which would change the walk.
  std::vector<std::pair<std::string, LinearImpl*>> targets;
  for (const auto& [path, linear] : projections(model)) {
    if (linear->adapter() == nullptr &&
        is_adapter_target(path, spec, pattern ? &*pattern : nullptr))
      targets.emplace_back(path, linear);
  }
  if (targets.empty()) throw InputError("no module matches the adapter's target_modules");
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(spec.seed);
  std::vector<std::string> paths;
  for (auto& [path, linear] : targets) {
    attach_lora(*linear, spec.lora, generator);
    paths.push_back(path);
  }
  return paths;
}

std::vector<std::pair<std::string, torch::Tensor>> trainable_parameters(Gemma4ForCausalLM& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : model->named_parameters()) {
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  }
  return out;
}

AdaptersDisabled::AdaptersDisabled(Gemma4ForCausalLM& model) {
  for (const auto& [path, lora] : lora_adapters(model)) {
    if (!lora->enabled) continue;  // already off: an outer guard owns it
    lora->enabled = false;
    adapters_.push_back(lora);
  }
}

AdaptersDisabled::~AdaptersDisabled() {
  for (LoraLinearImpl* lora : adapters_) lora->enabled = true;
}

}  // namespace gemma
