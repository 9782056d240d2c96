// AdamW with 8-bit blockwise state as bitsandbytes 0.50.2 computes it (`bnb.optim.AdamW8bit` /
// `PagedAdamW8bit`): bit for bit its CPU backend on CPU parameters, its CUDA kernel's arithmetic
// on GPU parameters (adamw_8bit_cuda.h). The first moment as signed and the second as unsigned
// dynamic-map codes with a float32 absmax per 256 elements; tensors under min_8bit_size elements
// keep float32 moments instead. A quarter of AdamW's state memory.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "optim/optimizer.h"

namespace gemma {

struct AdamW8bitOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;  // bitsandbytes' default; the Trainer's groups override it
  int64_t min_8bit_size = 4096;
  bool paged = false;  // PagedAdamW8bit: large state1/state2 paged (paged_state.h)
};

class AdamW8bit : public Optimizer {
 public:
  AdamW8bit(std::vector<ParamGroup> groups, AdamW8bitOptions options = {});
  AdamW8bit(const NamedTensors& params, AdamW8bitOptions options = {})
      : AdamW8bit(std::vector<ParamGroup>{ParamGroup{params, {}, {}}}, options) {}

  void step() override;
  // bitsandbytes' state names: `<name>.state1`, `<name>.state2` (uint8 codes, the parameter's
  // shape; float32 moments below min_8bit_size), `<name>.absmax1`, `<name>.absmax2` (float32
  // [ceil(n/256)], 8-bit state only) and `<name>.step` (int64 [1]).
  NamedTensors state_dict() const override;
  void load_state_dict(const NamedTensors& state) override;

  const AdamW8bitOptions& options() const { return options_; }
  // Whether `numel` elements get 8-bit state (strictly below min_8bit_size stays float32).
  bool is_8bit(int64_t numel) const { return numel >= options_.min_8bit_size; }

 private:
  struct State {
    int64_t step = 0;
    torch::Tensor state1, state2;    // uint8 codes (8-bit) or float32 moments
    torch::Tensor absmax1, absmax2;  // 8-bit only
  };
  void update_8bit(const Group& group, torch::Tensor& param, State& s);
  void update_32bit(const Group& group, torch::Tensor& param, State& s);
  State new_state(const torch::Tensor& param) const;

  AdamW8bitOptions options_;
  std::map<std::string, State> state_;
};

}  // namespace gemma
