#include "model/attention_mask.h"

namespace gemma {

torch::Tensor build_attention_mask(const AttentionMaskSpec& spec) {
  const torch::Tensor q = spec.query_index.view({1, 1, -1, 1});
  const torch::Tensor k = spec.key_index.view({1, 1, 1, -1});
  torch::Tensor allowed = k <= q;
  if (spec.sliding_window) allowed = allowed & (k > q - *spec.sliding_window);
  allowed = allowed & spec.key_valid.to(torch::kBool).unsqueeze(1).unsqueeze(1);
  if (spec.query_segment.defined()) {
    allowed = allowed & (spec.query_segment.unsqueeze(1).unsqueeze(-1) ==
                         spec.key_segment.unsqueeze(1).unsqueeze(2));
  }
  return allowed;
}

torch::Tensor packed_document_ids(const torch::Tensor& position_ids) {
  const torch::Tensor first = position_ids.narrow(1, 0, 1) - 1;
  const torch::Tensor step = torch::diff(position_ids, 1, -1, first);
  return (step != 1).to(torch::kInt64).cumsum(-1);
}

}  // namespace gemma
