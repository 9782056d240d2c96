// LoraLinear: the LoRA (or DoRA) adapter of one frozen projection, as PEFT's lora.Linear computes
// it (qlora-formats.md §3): y = base(x) + s·B(A(dropout(x))), and for DoRA the rows rescaled to
// the magnitude m: y = base(x) + (k - 1)·base(x_d) + k·s·B(A(x_d)), k = m / ‖W + s·B·A‖ per output
// row, the norm treated as a constant. It holds A [r, in], B [out, r], the magnitude [out], the
// scaling, dropout and an on/off switch; it attaches to a model/ Linear (attach_lora), which
// registers those tensors under PEFT's names.
#pragma once

#include <memory>
#include <utility>

#include <torch/torch.h>

#include "model/linear.h"
#include "peft/adapter_spec.h"

namespace gemma {

class LoraLinearImpl : public LinearAdapterImpl {
 public:
  // Initialised as PEFT does: A ~ U(±1/√in), B = 0 (or U(±1/√r) without init_lora_weights), and
  // the DoRA magnitude = the row norms of W + s·B·A. Random draws come from `generator`; the
  // tensors live on `base`'s device in `base.weight`'s dtype.
  LoraLinearImpl(const LinearImpl& base, const LoraOptions& options, at::Generator& generator);

  torch::Tensor adapt(const torch::Tensor& x, const torch::Tensor& base_y,
                      const LinearImpl& base) override;
  // s · B · A, [out, in].
  torch::Tensor delta() const;

  const LoraOptions& options() const { return options_; }
  // TRL's disable_dropout (DPO, KTO) sets the dropout probability of every module to 0.
  void set_dropout(double p) { options_.dropout = p; }
  bool is_dora() const { return lora_magnitude_vector.defined(); }
  bool enabled = true;  // off: the base projection alone (the DPO/KTO reference model)

  torch::nn::Linear lora_A{nullptr}, lora_B{nullptr};
  torch::Tensor lora_magnitude_vector;  // DoRA only

 private:
  // DoRA's ‖W + ΔW‖ per output row (no gradient).
  torch::Tensor dora_weight_norm(const LinearImpl& base);
  LoraOptions options_;
  torch::Tensor dora_norm_cache_;
  std::pair<int64_t, int64_t> dora_norm_versions_{-1, -1};
};
TORCH_MODULE(LoraLinear);

// Attaches a fresh LoraLinear to `base`; returns it.
LoraLinear attach_lora(LinearImpl& base, const LoraOptions& options, at::Generator& generator);

// The LoraLinear attached to `base`, or nullptr.
LoraLinearImpl* lora_of(const LinearImpl& base);

}  // namespace gemma
