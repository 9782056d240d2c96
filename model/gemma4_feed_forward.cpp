#include "model/gemma4_feed_forward.h"

#include <cmath>

#include "kernels/nf4_matmul.h"

namespace gemma {

torch::Tensor gemma4_activation(const torch::Tensor& x, const std::string& name) {
  return torch::gelu(x, name == "gelu" ? "none" : "tanh");
}

Gemma4MlpImpl::Gemma4MlpImpl(int64_t hidden_size, int64_t intermediate_size, std::string activation)
    : activation_(std::move(activation)) {
  gate_proj = register_module("gate_proj", Linear(hidden_size, intermediate_size));
  up_proj = register_module("up_proj", Linear(hidden_size, intermediate_size));
  down_proj = register_module("down_proj", Linear(intermediate_size, hidden_size));
}

torch::Tensor Gemma4MlpImpl::forward(const torch::Tensor& x) {
  return down_proj(gemma4_activation(gate_proj(x), activation_) * up_proj(x));
}

Gemma4RouterImpl::Gemma4RouterImpl(int64_t hidden_size, int64_t num_experts, int64_t top_k,
                                   double eps)
    : top_k_(top_k) {
  norm = register_module("norm", RmsNorm(RmsNormOptions(hidden_size).eps(eps).with_scale(false)));
  proj = register_module("proj", Linear(hidden_size, num_experts));
  scale = register_parameter("scale", torch::ones({hidden_size}));
  per_expert_scale = register_parameter("per_expert_scale", torch::ones({num_experts}));
}

RouterChoice Gemma4RouterImpl::forward(const torch::Tensor& r) {
  const double root_size = 1.0 / std::sqrt(static_cast<double>(r.size(-1)));
  const torch::Tensor z = norm(r) * scale * root_size;
  const auto fp = r.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  const torch::Tensor probs = torch::softmax(proj(z).to(fp), -1);  // fp32, over all experts
  auto [weights, experts] = probs.topk(top_k_, -1);
  weights = weights / weights.sum(-1, /*keepdim=*/true);
  weights = weights * per_expert_scale.index({experts});
  return {weights, experts};
}

Gemma4ExpertsImpl::Gemma4ExpertsImpl(int64_t num_experts, int64_t hidden_size,
                                     int64_t intermediate_size, std::string activation)
    : activation_(std::move(activation)) {
  gate_up_proj = register_parameter(
      "gate_up_proj", torch::empty({num_experts, 2 * intermediate_size, hidden_size}));
  down_proj =
      register_parameter("down_proj", torch::empty({num_experts, hidden_size, intermediate_size}));
}

torch::Tensor Gemma4ExpertsImpl::forward(const torch::Tensor& u, const RouterChoice& choice) {
  torch::Tensor out = torch::zeros_like(u);
  const int64_t num_experts = gate_up_proj.size(0);
  // Which (token, slot) pairs chose each expert; computed once on the host.
  const torch::Tensor chosen = choice.experts.to(torch::kCPU);
  for (int64_t e = 0; e < num_experts; ++e) {
    const torch::Tensor hits = (chosen == e).nonzero();  // [n, 2]: token, slot
    if (hits.size(0) == 0) continue;
    const torch::Tensor token = hits.select(1, 0).to(u.device());
    const torch::Tensor slot = hits.select(1, 1).to(u.device());
    const torch::Tensor gate_up = project(u.index_select(0, token), e, /*gate_up=*/true);
    const auto parts = gate_up.chunk(2, -1);
    const torch::Tensor act = gemma4_activation(parts[0], activation_) * parts[1];
    const torch::Tensor y = project(act, e, /*gate_up=*/false);
    const torch::Tensor w = choice.weights.index({token, slot}).unsqueeze(-1);
    // As transformers: the weighting promotes to float32, the sum is kept in the activation dtype.
    out = out.index_add(0, token, (y * w).to(out.scalar_type()));
  }
  return out;
}

torch::Tensor Gemma4ExpertsImpl::project(const torch::Tensor& x, int64_t expert,
                                         bool gate_up) const {
  if (is_nf4()) return nf4_linear(x, (gate_up ? gate_up_nf4_ : down_nf4_)[expert]);
  return torch::nn::functional::linear(x, (gate_up ? gate_up_proj : down_proj)[expert]);
}

void Gemma4ExpertsImpl::set_nf4_experts(std::vector<Nf4Weight> gate_up,
                                        std::vector<Nf4Weight> down) {
  const int64_t experts = gate_up_proj.size(0);
  TORCH_CHECK(static_cast<int64_t>(gate_up.size()) == experts &&
                  static_cast<int64_t>(down.size()) == experts,
              "Gemma4Experts: one NF4 weight per expert");
  gate_up_nf4_ = std::move(gate_up);
  down_nf4_ = std::move(down);
  for (int64_t e = 0; e < experts; ++e) {
    register_nf4_buffers("gate_up_proj_" + std::to_string(e), gate_up_nf4_[e]);
    register_nf4_buffers("down_proj_" + std::to_string(e), down_nf4_[e]);
  }
  make_placeholder("gate_up_proj", gate_up_proj);
  make_placeholder("down_proj", down_proj);
}

int64_t Gemma4ExpertsImpl::nf4_bytes() const {
  int64_t n = 0;
  for (const auto* list : {&gate_up_nf4_, &down_nf4_}) {
    for (const Nf4Weight& w : *list) n += w.nbytes();
  }
  return n;
}

}  // namespace gemma
