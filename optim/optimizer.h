// What every optimizer of the trainer shares: parameter groups (each with its own lr and weight
// decay, the lr scaled by the schedule) and state kept by parameter *name*, so a checkpoint of
// the state is a flat list of named tensors the trainer writes as safetensors (style.md §13).
#pragma once

#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace gemma {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Parameters sharing lr and weight decay; unset values take the optimizer's options.
struct ParamGroup {
  NamedTensors params;
  std::optional<double> lr;
  std::optional<double> weight_decay;
};

// transformers' Trainer.get_decay_parameter_names: a parameter decays unless its lower-cased
// name matches `bias`, `layernorm`, `rmsnorm`, `(^|\.)norm($|\.)` or `_norm($|\.)`. (The Trainer
// also exempts parameters inside nn.LayerNorm; our norms are all named so, see Gemma's
// `input_layernorm`, `q_norm`, `model.norm`.)
bool is_decay_parameter_name(const std::string& name);

// The Trainer's two groups, in its order: decaying parameters with `weight_decay`, the rest with
// 0. Empty groups are left out.
std::vector<ParamGroup> decay_parameter_groups(const NamedTensors& named_params,
                                               double weight_decay);

// A state list being loaded: each key is taken once, checked against what the parameter needs;
// whatever is left over at the end is an error (a parameter that is not in this optimizer).
class SavedState {
 public:
  explicit SavedState(const NamedTensors& state);
  bool contains(const std::string& key) const { return by_key_.count(key) != 0; }
  // A copy on `device` of the tensor under `key`; throws std::invalid_argument naming the key
  // when it is missing or has another shape or dtype.
  torch::Tensor take(const std::string& key, torch::IntArrayRef shape, torch::ScalarType dtype,
                     const torch::Device& device);
  void expect_all_taken() const;

 private:
  std::map<std::string, torch::Tensor> by_key_;
};

// The base of AdamW and AdamW8bit: resolved groups and the schedule's lr multiplier.
class Optimizer {
 public:
  struct Group {
    NamedTensors params;
    double initial_lr;  // what the schedule multiplies
    double lr;
    double weight_decay;
  };

  Optimizer(std::vector<ParamGroup> groups, double default_lr, double default_weight_decay);
  virtual ~Optimizer() = default;

  // One update of every parameter that has a gradient (parameters without one keep their state
  // and step count, as in torch.optim).
  virtual void step() = 0;
  // The state under `<param name>.<state name>` keys; load_state_dict takes the same list back
  // (every parameter's entries or none of them) and throws std::invalid_argument naming the key.
  virtual NamedTensors state_dict() const = 0;
  virtual void load_state_dict(const NamedTensors& state) = 0;

  // lr of every group = its initial lr times `multiplier` (a LambdaLR step).
  void set_lr_multiplier(double multiplier);
  const std::vector<Group>& groups() const { return groups_; }
  void zero_grad();  // sets every gradient to undefined, like zero_grad(set_to_none=True)

 protected:
  std::vector<Group> groups_;
};

}  // namespace gemma
