// Linear: y = x · Wᵀ with a [out, in] weight and no bias, the only kind of projection in the
// Gemma 4 decoder, and the one place an adapter attaches (as llama.cpp routes every projection
// through one adapter-aware matmul). Its weight is allocated uninitialised in the default dtype: a
// checkpoint load then fills it once, so a model is never built at twice its size. A QLoRA base
// holds its weight as NF4 instead (set_nf4_weight): registered buffers (Nf4HoldingModule), while
// `weight` keeps only its shape, and every matmul goes through nf4_linear.
// The adapter itself (peft/lora_linear.h) is its own module, attached with attach_adapter: its
// parameters and submodules are registered here under their own names, so with the module path in
// front they are PEFT's saved keys (`q_proj.lora_A.weight`), and a walk for projections (this
// type) never finds the adapter's matrices (LibTorch's own Linear).
#pragma once

#include <memory>

#include <torch/torch.h>

#include "kernels/nf4.h"
#include "model/nf4_holding_module.h"

namespace gemma {

class LinearImpl;

// What attaches to a Linear: given the input and the base projection's output, the adapted
// output. peft/ implements it (LoRA, DoRA); model/ knows only this.
class LinearAdapterImpl : public torch::nn::Module {
 public:
  virtual torch::Tensor adapt(const torch::Tensor& x, const torch::Tensor& base_y,
                              const LinearImpl& base) = 0;
};

class LinearImpl : public Nf4HoldingModuleImpl {
 public:
  LinearImpl(int64_t in_features, int64_t out_features);
  torch::Tensor forward(const torch::Tensor& x);
  // The frozen projection alone: x · Wᵀ (through nf4_linear for an NF4 base).
  torch::Tensor base_forward(const torch::Tensor& x) const;
  // grad_y · W: the input gradient of base_forward, as its backward computes it.
  torch::Tensor base_input_grad(const torch::Tensor& grad_y) const;
  // The base weight gets no gradient (an NF4 base, or a dense weight that does not require one).
  bool base_frozen() const { return nf4_ != nullptr || !weight.requires_grad(); }

  // Replaces the dense weight by its frozen NF4 form (same [out, in] shape), freeing the dense one.
  void set_nf4_weight(Nf4Weight weight);
  bool is_nf4() const { return nf4_ != nullptr; }
  const Nf4Weight* nf4_weight() const { return nf4_.get(); }
  // The base weight as a dense tensor in `dtype` (dequantized for an NF4 base).
  torch::Tensor dense_weight(torch::ScalarType dtype) const;
  int64_t in_features() const { return weight.size(1); }
  int64_t out_features() const { return weight.size(0); }
  // Where the base weight's values live (the NF4 bytes' device for an NF4 base).
  torch::Device device() const;

  // Attaches `adapter` (one at most) and registers its parameters and submodules here.
  void attach_adapter(std::shared_ptr<LinearAdapterImpl> adapter);
  const std::shared_ptr<LinearAdapterImpl>& adapter() const { return adapter_; }

  torch::Tensor weight;  // [out, in]

 private:
  std::unique_ptr<Nf4Weight> nf4_;
  std::shared_ptr<LinearAdapterImpl> adapter_;
};
TORCH_MODULE(Linear);

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
