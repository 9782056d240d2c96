// A module that may hold some of its frozen weights as NF4 (a QLoRA base): the NF4 bytes and
// their double-quant constants are registered buffers, so named_buffers(), to() and device moves
// see them (style.md §4), while the dense parameter keeps only its shape. to(dtype) converts the
// module's floating tensors but keeps NF4 as NF4: the bytes never change, only their device.
#pragma once

#include <set>
#include <string>

#include <torch/torch.h>

#include "kernels/nf4.h"

namespace gemma {

// Whether a buffer name is one of the NF4 parts hold_as_nf4 registers ("<stem>_nf4_packed", ...):
// they are not checkpoint tensors (bitsandbytes' keys are spelt by io/bnb_nf4_format).
bool is_nf4_buffer_name(const std::string& name);

class Nf4HoldingModuleImpl : public torch::nn::Module {
 public:
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;

 protected:
  // Registers w's tensors as buffers "<stem>_nf4_packed", "<stem>_nf4_absmax_codes",
  // "<stem>_nf4_nested_absmax", "<stem>_nf4_quant_map", "<stem>_nf4_nested_quant_map" and makes `w`
  // alias them (a move of the module moves `w`); `dense`, a registered parameter named `stem`,
  // becomes a placeholder of its shape without storage and stops requiring grad.
  void hold_as_nf4(const std::string& stem, Nf4Weight& w, torch::Tensor& dense);
  // The two halves of hold_as_nf4, for a parameter held as several NF4 weights (MoE experts).
  void register_nf4_buffers(const std::string& stem, Nf4Weight& w);
  void make_placeholder(const std::string& name, torch::Tensor& dense);

 private:
  void move(std::optional<torch::Device> device, std::optional<torch::Dtype> dtype,
            bool non_blocking);
  std::set<std::string> placeholders_;  // parameter names whose values live in NF4 buffers
};

// A tensor with `t`'s shape, dtype and device over a single element: what a parameter whose values
// now live elsewhere (NF4) keeps, so shapes still read right. Writing into it fails loudly.
torch::Tensor placeholder_of_shape(const torch::Tensor& t);

}  // namespace gemma
