// DPO's and KTO's reference model without a second copy of the base (qlora-formats.md §4.2): the
// model being trained, run without gradients either with every adapter off (the NF4 base) or with
// the adapter the run started from swapped in for the trained one (TRL's frozen "ref" adapter when
// training continues an adapter). Only adapter-sized tensors are ever copied. A forward without
// gradients runs without activation checkpointing (Gemma4TextModel), as TRL disables it there.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "model/gemma4_model.h"

namespace gemma {

class ReferenceModel {
 public:
  // The base: adapters off.
  ReferenceModel() = default;
  // The adapter `model` holds now, kept (copied) as the reference for the whole run.
  static ReferenceModel frozen_adapter(Gemma4ForCausalLM& model);

  bool is_base() const { return frozen_.empty(); }

  // `forward()` with `model` computing as the reference, under no_grad; the trained adapter is
  // back in place afterwards, also when `forward` throws.
  torch::Tensor run(Gemma4ForCausalLM& model, const std::function<torch::Tensor()>& forward) const;

 private:
  std::vector<std::pair<std::string, torch::Tensor>> frozen_;
};

}  // namespace gemma
