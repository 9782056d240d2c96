// torch/nn/utils/clip_grad.py: per-gradient norms, the norm of those, then one multiply each by
// the clamped coefficient (also when it is 1, as torch does).
#include "optim/grad_clip.h"

#include <vector>

namespace gemma {

double clip_grad_norm(const NamedTensors& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads, norms;
  for (const auto& [name, param] : params) {
    if (param.grad().defined()) grads.push_back(param.grad());
  }
  if (grads.empty()) return 0.0;
  const torch::Device device = grads.front().device();
  for (const auto& g : grads) norms.push_back(torch::linalg_vector_norm(g, 2).to(device));
  const torch::Tensor total = torch::linalg_vector_norm(torch::stack(norms), 2);
  // Python's `max_norm / tensor` is reciprocal() * max_norm.
  const torch::Tensor coef = torch::clamp_max((total + 1e-6).reciprocal() * max_norm, 1.0);
  for (auto& g : grads) g.mul_(coef.to(g.device()));
  return total.item<double>();
}

}  // namespace gemma
