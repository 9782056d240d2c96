// AdamW with state in the parameter's dtype, operation for operation as torch.optim.AdamW's
// single-tensor path (torch 2.15) computes it: decoupled weight decay before the step, exp_avg
// by lerp, bias corrections in double. The trainer's `adamw_torch` choice.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "optim/optimizer.h"

namespace gemma {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // torch's default; groups may override it
  bool paged = false;          // PagedAdamW: large moments paged (paged_state.h)
};

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamWOptions options = {});
  AdamW(const NamedTensors& params, AdamWOptions options = {})
      : AdamW(std::vector<ParamGroup>{ParamGroup{params, {}, {}}}, options) {}

  void step() override;
  // Keys `<name>.exp_avg`, `<name>.exp_avg_sq` (the parameter's dtype and shape) and
  // `<name>.step` (int64 [1]) for every parameter that has taken a step.
  NamedTensors state_dict() const override;
  void load_state_dict(const NamedTensors& state) override;

  const AdamWOptions& options() const { return options_; }

 private:
  struct State {
    int64_t step = 0;
    torch::Tensor exp_avg, exp_avg_sq;
  };
  AdamWOptions options_;
  std::map<std::string, State> state_;
};

}  // namespace gemma
