// Parameter groups and the name-based decay split shared by the optimizers.
#include "optim/optimizer.h"

#include <algorithm>
#include <cctype>
#include <regex>
#include <set>
#include <stdexcept>

namespace gemma {

bool is_decay_parameter_name(const std::string& name) {
  // trainer.py get_decay_parameter_names (transformers 5.23), searched in the lower-cased name.
  static const std::regex kNoDecay(R"(bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.))");
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return !std::regex_search(lower, kNoDecay);
}

std::vector<ParamGroup> decay_parameter_groups(const NamedTensors& named_params,
                                               double weight_decay) {
  ParamGroup decay, no_decay;
  decay.weight_decay = weight_decay;
  no_decay.weight_decay = 0.0;
  for (const auto& [name, param] : named_params) {
    (is_decay_parameter_name(name) ? decay : no_decay).params.emplace_back(name, param);
  }
  std::vector<ParamGroup> groups;
  if (!decay.params.empty()) groups.push_back(std::move(decay));
  if (!no_decay.params.empty()) groups.push_back(std::move(no_decay));
  return groups;
}

Optimizer::Optimizer(std::vector<ParamGroup> groups, double default_lr,
                     double default_weight_decay) {
  std::set<std::string> names;
  for (auto& g : groups) {
    const double lr = g.lr.value_or(default_lr);
    groups_.push_back({std::move(g.params), lr, lr, g.weight_decay.value_or(default_weight_decay)});
    for (const auto& [name, param] : groups_.back().params) {
      // State is keyed by name, so a name may appear once.
      if (!names.insert(name).second) {
        throw std::invalid_argument("optimizer: parameter " + name + " appears twice");
      }
      TORCH_CHECK(param.defined(), "optimizer: parameter ", name, " is undefined");
    }
  }
}

SavedState::SavedState(const NamedTensors& state) {
  for (const auto& [key, t] : state) {
    if (!by_key_.emplace(key, t).second) {
      throw std::invalid_argument("optimizer state: key " + key + " appears twice");
    }
  }
}

torch::Tensor SavedState::take(const std::string& key, torch::IntArrayRef shape,
                               torch::ScalarType dtype, const torch::Device& device) {
  auto it = by_key_.find(key);
  if (it == by_key_.end()) throw std::invalid_argument("optimizer state: missing " + key);
  const torch::Tensor t = it->second;
  if (t.sizes() != shape || t.scalar_type() != dtype) {
    throw std::invalid_argument("optimizer state: " + key + " is " +
                                c10::toString(t.scalar_type()) + " " + c10::str(t.sizes()) +
                                ", expected " + c10::toString(dtype) + " " + c10::str(shape));
  }
  by_key_.erase(it);
  return t.to(device, /*non_blocking=*/false, /*copy=*/true).contiguous();
}

void SavedState::expect_all_taken() const {
  if (!by_key_.empty()) {
    throw std::invalid_argument("optimizer state: unexpected key " + by_key_.begin()->first);
  }
}

void Optimizer::set_lr_multiplier(double multiplier) {
  for (auto& g : groups_) g.lr = g.initial_lr * multiplier;
}

void Optimizer::zero_grad() {
  for (auto& g : groups_) {
    for (auto& [name, param] : g.params) param.mutable_grad() = torch::Tensor();
  }
}

}  // namespace gemma
