// torch/optim/adam.py `_single_tensor_adam` with decoupled_weight_decay=True, amsgrad=False,
// non-capturable: the same ops with the same (double) scalars, so the same bits on CPU.
#include "optim/adamw.h"

#include <cmath>
#include <stdexcept>

#include "optim/paged_state.h"

namespace gemma {

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options)
    : Optimizer(std::move(groups), options.lr, options.weight_decay), options_(options) {}

void AdamW::step() {
  torch::NoGradGuard no_grad;
  const double beta1 = options_.beta1, beta2 = options_.beta2;
  for (auto& group : groups_) {
    for (auto& [name, param] : group.params) {
      const torch::Tensor& grad = param.grad();
      if (!grad.defined()) continue;
      State& s = state_[name];
      if (s.step == 0) {
        s.exp_avg = state_zeros(param, param.scalar_type(), options_.paged);
        s.exp_avg_sq = state_zeros(param, param.scalar_type(), options_.paged);
      }
      prefetch_state(s.exp_avg);
      prefetch_state(s.exp_avg_sq);
      const double t = static_cast<double>(++s.step);
      if (group.weight_decay != 0) param.mul_(1 - group.lr * group.weight_decay);
      s.exp_avg.lerp_(grad, 1 - beta1);
      s.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
      const double bias_correction1 = 1 - std::pow(beta1, t);
      const double bias_correction2 = 1 - std::pow(beta2, t);
      const double step_size = group.lr / bias_correction1;
      const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);  // Python's **0.5
      const torch::Tensor denom = (s.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(options_.eps);
      param.addcdiv_(s.exp_avg, denom, -step_size);
    }
  }
}

NamedTensors AdamW::state_dict() const {
  NamedTensors out;
  for (const auto& group : groups_) {
    for (const auto& [name, param] : group.params) {
      auto it = state_.find(name);
      if (it == state_.end()) continue;
      out.emplace_back(name + ".exp_avg", it->second.exp_avg);
      out.emplace_back(name + ".exp_avg_sq", it->second.exp_avg_sq);
      out.emplace_back(name + ".step", torch::tensor({it->second.step}, torch::kInt64));
    }
  }
  return out;
}

void AdamW::load_state_dict(const NamedTensors& state) {
  SavedState saved(state);
  std::map<std::string, State> loaded;
  for (const auto& group : groups_) {
    for (const auto& [name, param] : group.params) {
      if (!saved.contains(name + ".step")) continue;  // a parameter that never stepped
      State s;
      s.step = saved.take(name + ".step", {1}, torch::kInt64, torch::kCPU).item<int64_t>();
      s.exp_avg = state_zeros(param, param.scalar_type(), options_.paged);
      s.exp_avg_sq = state_zeros(param, param.scalar_type(), options_.paged);
      s.exp_avg.copy_(
          saved.take(name + ".exp_avg", param.sizes(), param.scalar_type(), param.device()));
      s.exp_avg_sq.copy_(
          saved.take(name + ".exp_avg_sq", param.sizes(), param.scalar_type(), param.device()));
      loaded[name] = std::move(s);
    }
  }
  saved.expect_all_taken();
  state_ = std::move(loaded);
}

}  // namespace gemma
