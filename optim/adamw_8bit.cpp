// CPU parameters: backends/cpu/ops.py `_optimizer_update_8bit_blockwise_cpu` and
// `_optimizer_update_32bit_cpu` ("adam", gnorm_scale 1, no max_unorm) as called by
// Optimizer2State.update_step: the same torch ops with the same double scalars in the same order,
// so the same bits (§2.2).
//
// CUDA parameters: what bitsandbytes' CUDA kernels compute instead (adamw_8bit_cuda.h): decay
// *after* the Adam step, __powf/__fdividef and `eps * c2` in the denominator, m and v zeroed where
// the gradient is not finite, exact-nearest requantization with a sign fix on state1. Each device
// gives the numbers bitsandbytes gives on it.
#include "optim/adamw_8bit.h"

#include <cmath>

#include "optim/adamw_8bit_cuda.h"
#include "optim/blockwise_8bit.h"
#include "optim/paged_state.h"

namespace gemma {

AdamW8bit::AdamW8bit(std::vector<ParamGroup> groups, AdamW8bitOptions options)
    : Optimizer(std::move(groups), options.lr, options.weight_decay), options_(options) {}

AdamW8bit::State AdamW8bit::new_state(const torch::Tensor& param) const {
  State s;
  const int64_t n = param.numel();
  if (is_8bit(n)) {
    TORCH_CHECK(param.device().is_cpu() || param.device().is_cuda(),
                "AdamW8bit: 8-bit state on CPU or CUDA parameters, not ", param.device());
    const int64_t blocks = (n + kBlockwise8bitBlockSize - 1) / kBlockwise8bitBlockSize;
    s.state1 = state_zeros(param, torch::kUInt8, options_.paged);
    s.state2 = state_zeros(param, torch::kUInt8, options_.paged);
    // absmax is never paged (bitsandbytes neither).
    s.absmax1 = torch::zeros({blocks}, param.options().dtype(torch::kFloat32));
    s.absmax2 = torch::zeros({blocks}, param.options().dtype(torch::kFloat32));
  } else {
    s.state1 = state_zeros(param, torch::kFloat32, options_.paged);
    s.state2 = state_zeros(param, torch::kFloat32, options_.paged);
  }
  return s;
}

void AdamW8bit::step() {
  torch::NoGradGuard no_grad;
  for (auto& group : groups_) {
    for (auto& [name, param] : group.params) {
      if (!param.grad().defined()) continue;
      auto it = state_.find(name);
      if (it == state_.end()) it = state_.emplace(name, new_state(param)).first;
      State& s = it->second;
      ++s.step;
      const bool is_8bit_state = s.state1.scalar_type() == torch::kUInt8;
      if (param.is_cuda()) {
        prefetch_state(s.state1);
        prefetch_state(s.state2);
        const AdamWStepHyper hyper{group.lr,     options_.beta1,     options_.beta2,
                                   options_.eps, group.weight_decay, s.step};
        if (is_8bit_state) {
          adamw_8bit_cuda_step(param, param.grad(), s.state1, s.state2, s.absmax1, s.absmax2,
                               hyper);
        } else {
          adamw_32bit_state_cuda_step(param, param.grad(), s.state1, s.state2, hyper);
        }
      } else if (is_8bit_state) {
        update_8bit(group, param, s);
      } else {
        update_32bit(group, param, s);
      }
    }
  }
}

void AdamW8bit::update_8bit(const Group& group, torch::Tensor& param, State& s) {
  const double beta1 = options_.beta1, beta2 = options_.beta2, lr = group.lr;
  const double t = static_cast<double>(s.step);
  // 1. Dequantize; float32 working copies (`p.float()` is `p` itself for a float32 parameter).
  torch::Tensor m = dequantize_blockwise_8bit(s.state1, s.absmax1, dynamic_codebook(true));
  torch::Tensor v = dequantize_blockwise_8bit(s.state2, s.absmax2, dynamic_codebook(false));
  const torch::Tensor g = param.grad().contiguous().to(torch::kFloat32);
  torch::Tensor p = param.to(torch::kFloat32);
  // 2. Moments.
  m.mul_(beta1).add_(g, 1.0 - beta1);
  v.mul_(beta2).addcmul_(g, g, 1.0 - beta2);
  // 3. Bias corrections (Python floats) and the denominator.
  const double correction1 = 1.0 - std::pow(beta1, t);
  const double correction2 = std::sqrt(1.0 - std::pow(beta2, t));
  const torch::Tensor denom = (v.sqrt() / correction2).add_(options_.eps);
  // 4. Decay before the step, like torch.optim.AdamW (the CUDA kernel decays after).
  if (group.weight_decay > 0.0) p.mul_(1.0 - lr * group.weight_decay);
  // 5. The step, one rounding to the parameter's dtype.
  p.addcdiv_(m, denom, -lr / correction1);
  if (!p.is_same(param)) param.copy_(p);
  // 6. Requantize into the existing state tensors.
  quantize_blockwise_8bit_into(m, dynamic_codebook(true), s.state1, s.absmax1);
  quantize_blockwise_8bit_into(v, dynamic_codebook(false), s.state2, s.absmax2);
}

void AdamW8bit::update_32bit(const Group& group, torch::Tensor& param, State& s) {
  const double beta1 = options_.beta1, beta2 = options_.beta2, lr = group.lr;
  const double t = static_cast<double>(s.step);
  const torch::Tensor g = param.grad().to(torch::kFloat32);
  torch::Tensor p = param.to(torch::kFloat32);
  s.state1.mul_(beta1).add_(g, 1.0 - beta1);
  s.state2.mul_(beta2).addcmul_(g, g, 1.0 - beta2);
  const double correction1 = 1.0 - std::pow(beta1, t);
  const double correction2 = std::sqrt(1.0 - std::pow(beta2, t));
  const double step_size = -lr * correction2 / correction1;
  if (group.weight_decay > 0.0) p.mul_(1.0 - lr * group.weight_decay);
  // `eps * c2` inside the denominator here, unlike the 8-bit path (§2.2).
  const torch::Tensor update = s.state1 / (s.state2.sqrt() + options_.eps * correction2);
  p.add_(update, step_size);
  if (!p.is_same(param)) param.copy_(p);
}

NamedTensors AdamW8bit::state_dict() const {
  NamedTensors out;
  for (const auto& group : groups_) {
    for (const auto& [name, param] : group.params) {
      auto it = state_.find(name);
      if (it == state_.end()) continue;
      const State& s = it->second;
      out.emplace_back(name + ".state1", s.state1);
      out.emplace_back(name + ".state2", s.state2);
      if (s.absmax1.defined()) {
        out.emplace_back(name + ".absmax1", s.absmax1);
        out.emplace_back(name + ".absmax2", s.absmax2);
      }
      out.emplace_back(name + ".step", torch::tensor({s.step}, torch::kInt64));
    }
  }
  return out;
}

void AdamW8bit::load_state_dict(const NamedTensors& state) {
  SavedState saved(state);
  std::map<std::string, State> loaded;
  for (const auto& group : groups_) {
    for (const auto& [name, param] : group.params) {
      if (!saved.contains(name + ".step")) continue;  // a parameter that never stepped
      State s = new_state(param);
      s.step = saved.take(name + ".step", {1}, torch::kInt64, torch::kCPU).item<int64_t>();
      const torch::ScalarType dtype = s.state1.scalar_type();
      s.state1.copy_(saved.take(name + ".state1", param.sizes(), dtype, s.state1.device()));
      s.state2.copy_(saved.take(name + ".state2", param.sizes(), dtype, s.state2.device()));
      if (s.absmax1.defined()) {
        s.absmax1.copy_(
            saved.take(name + ".absmax1", s.absmax1.sizes(), torch::kFloat32, s.absmax1.device()));
        s.absmax2.copy_(
            saved.take(name + ".absmax2", s.absmax2.sizes(), torch::kFloat32, s.absmax2.device()));
      }
      loaded[name] = std::move(s);
    }
  }
  saved.expect_all_taken();
  state_ = std::move(loaded);
}

}  // namespace gemma
