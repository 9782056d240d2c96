// The feed-forward parts of a Gemma 4 layer (gemma4-architecture.md §2.6): the dense GeGLU MLP,
// and for the MoE model the router (reads the un-normalised residual; softmax over all experts,
// top-k, renormalise, per-expert scale) and the experts stored as 3-D tensors
// (gate_up_proj [E, 2·I, H] with gate rows first, down_proj [E, H, I]).
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

#include "model/linear.h"
#include "model/nf4_holding_module.h"
#include "model/rms_norm.h"

namespace gemma {

// gelu_pytorch_tanh (the tanh approximation) or gelu (exact erf), by the config's name.
torch::Tensor gemma4_activation(const torch::Tensor& x, const std::string& name);

class Gemma4MlpImpl : public torch::nn::Module {
 public:
  Gemma4MlpImpl(int64_t hidden_size, int64_t intermediate_size, std::string activation);
  torch::Tensor forward(const torch::Tensor& x);

  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  std::string activation_;
};
TORCH_MODULE(Gemma4Mlp);

struct RouterChoice {
  torch::Tensor weights;  // [N, k] float32: renormalised probabilities × per_expert_scale
  torch::Tensor experts;  // [N, k] int64
};

class Gemma4RouterImpl : public torch::nn::Module {
 public:
  Gemma4RouterImpl(int64_t hidden_size, int64_t num_experts, int64_t top_k, double eps);
  // r [N, H], the residual stream before any feed-forward norm.
  RouterChoice forward(const torch::Tensor& r);

  RmsNorm norm{nullptr};
  Linear proj{nullptr};
  torch::Tensor scale;             // [H]
  torch::Tensor per_expert_scale;  // [E]

 private:
  int64_t top_k_;
};
TORCH_MODULE(Gemma4Router);

class Gemma4ExpertsImpl : public Nf4HoldingModuleImpl {
 public:
  Gemma4ExpertsImpl(int64_t num_experts, int64_t hidden_size, int64_t intermediate_size,
                    std::string activation);
  // u [N, H] -> Σ_k weight_k · expert_k(u), [N, H].
  torch::Tensor forward(const torch::Tensor& u, const RouterChoice& choice);

  // A QLoRA base: each expert's two matrices as frozen NF4 weights (one per expert, so an expert is
  // dequantized alone); the dense parameters keep only their shapes.
  void set_nf4_experts(std::vector<Nf4Weight> gate_up, std::vector<Nf4Weight> down);
  bool is_nf4() const { return !gate_up_nf4_.empty(); }
  int64_t nf4_bytes() const;
  // Expert e's NF4 gate_up (true) or down (false) matrix.
  const Nf4Weight& nf4_weight(int64_t expert, bool gate_up) const {
    return (gate_up ? gate_up_nf4_ : down_nf4_).at(expert);
  }

  torch::Tensor gate_up_proj;  // [E, 2·I, H]
  torch::Tensor down_proj;     // [E, H, I]

 private:
  torch::Tensor project(const torch::Tensor& x, int64_t expert, bool gate_up) const;

  std::string activation_;
  std::vector<Nf4Weight> gate_up_nf4_, down_nf4_;
};
TORCH_MODULE(Gemma4Experts);

}  // namespace gemma
