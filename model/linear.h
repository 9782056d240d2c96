// Linear: y = x · Wᵀ with a [out, in] weight and no bias, the only kind of projection in the
// Gemma 4 decoder, and the one place a LoRA or DoRA adapter attaches (as llama.cpp routes every
// projection through one adapter-aware matmul). Its weight is allocated uninitialised in the
// default dtype: a checkpoint load then fills it once, so a model is never built at twice its size.
// An attached adapter registers `lora_A.weight` [r, in], `lora_B.weight` [out, r] and, for DoRA,
// `lora_magnitude_vector` [out]: with the module path in front these are PEFT's saved key names.
// A QLoRA base holds its weight as NF4 instead (set_nf4_weight): `weight` then keeps only its shape
// (a placeholder without storage of its own) and every matmul goes through nf4_linear.
#pragma once

#include <memory>
#include <utility>

#include <torch/torch.h>

#include "kernels/nf4.h"

namespace gemma {

struct LoraOptions {
  int64_t r = 8;
  double alpha = 8.0;
  double dropout = 0.0;
  bool use_rslora = false;  // scaling alpha/√r instead of alpha/r
  bool use_dora = false;
  // PEFT's init_lora_weights: true starts B at zero (the model unchanged); false leaves B random
  // as well, U(±1/√r), which PEFT offers for tests.
  bool init_lora_weights = true;
  double scaling() const;
};

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features);
  torch::Tensor forward(const torch::Tensor& x);

  // Replaces the dense weight by its frozen NF4 form (same [out, in] shape), freeing the dense one.
  void set_nf4_weight(Nf4Weight weight);
  bool is_nf4() const { return nf4_ != nullptr; }
  const Nf4Weight* nf4_weight() const { return nf4_.get(); }
  // The base weight as a dense tensor in `dtype` (dequantized for an NF4 base).
  torch::Tensor dense_weight(torch::ScalarType dtype) const;
  // Moves the NF4 bytes with the module (the meta-device `weight` stays where it is).
  void to(torch::Device device, bool non_blocking = false) override;

  // Registers a LoRA (or DoRA) adapter initialised as PEFT does: A ~ U(±1/√in), B = 0 (or
  // U(±1/√r) without init_lora_weights), and the DoRA magnitude = the row norms of W + s·B·A.
  // Random draws come from `generator`.
  void attach_lora(const LoraOptions& options, at::Generator& generator);
  bool has_lora() const { return lora_B != nullptr; }
  // s · B · A, [out, in].
  torch::Tensor lora_delta() const;

  torch::Tensor weight;  // [out, in]
  std::shared_ptr<LinearImpl> lora_A, lora_B;
  torch::Tensor lora_magnitude_vector;  // DoRA only
  LoraOptions lora_options;
  bool adapter_enabled = true;  // off: the base projection alone (the DPO/KTO reference model)

 private:
  torch::Tensor base_forward(const torch::Tensor& x) const;
  // DoRA's ‖W + ΔW‖ per output row, treated as a constant (no gradient).
  torch::Tensor dora_weight_norm();
  std::shared_ptr<Nf4Weight> nf4_;
  torch::Tensor dora_norm_cache_;
  std::pair<int64_t, int64_t> dora_norm_versions_{-1, -1};
};
TORCH_MODULE(Linear);

// A tensor with `t`'s shape, dtype and device over a single element: what a parameter whose values
// now live elsewhere (NF4) keeps, so shapes still read right. Writing into it fails loudly.
torch::Tensor placeholder_of_shape(const torch::Tensor& t);

// Sets the default dtype for the lifetime of the guard (modules allocate their tensors in it).
class DefaultDtypeGuard {
 public:
  explicit DefaultDtypeGuard(torch::ScalarType dtype);
  ~DefaultDtypeGuard();
  DefaultDtypeGuard(const DefaultDtypeGuard&) = delete;
  DefaultDtypeGuard& operator=(const DefaultDtypeGuard&) = delete;

 private:
  caffe2::TypeMeta previous_;
};

}  // namespace gemma
