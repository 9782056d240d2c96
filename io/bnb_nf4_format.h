// bitsandbytes' serialized 4-bit form of one weight (qlora-formats.md §1.8): the translation table
// between an Nf4Weight and the `P.weight`, `P.weight.absmax`, `P.weight.quant_map`,
// `P.weight.nested_absmax`, `P.weight.nested_quant_map` and
// `P.weight.quant_state.bitsandbytes__nf4` keys, and the `quantization_config` of config.json. No
// other file spells these names.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "io/hf_checkpoint.h"
#include "kernels/nf4.h"

namespace gemma {

// The six tensors of `weight_key` (e.g. "model.layers.0.self_attn.q_proj.weight").
std::vector<std::pair<std::string, torch::Tensor>> bnb_nf4_tensors(const std::string& weight_key,
                                                                   const Nf4Weight& w);
// Every key bnb_nf4_tensors() writes for `weight_key`.
std::vector<std::string> bnb_nf4_keys(const std::string& weight_key);

// Whether the checkpoint stores `weight_key` in bitsandbytes' NF4 form.
bool has_bnb_nf4(const HfCheckpointReader& reader, const std::string& weight_key);
// Reads it back; InputError naming the key for a missing part, a bad quant-state JSON, or sizes
// that do not fit the recorded shape.
Nf4Weight read_bnb_nf4(const HfCheckpointReader& reader, const std::string& weight_key,
                       const std::string& where);

// The JSON bytes of `quant_state.bitsandbytes__nf4`, formatted as Python's json.dumps does.
std::string bnb_quant_state_json(const Nf4Weight& w);
// config.json's "quantization_config" for an NF4 double-quant checkpoint computing in
// `compute_dtype`.
nlohmann::json bnb_quantization_config(const std::string& compute_dtype);

}  // namespace gemma
