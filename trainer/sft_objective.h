// SFT's objective, TRL 1.16's `loss_type: nll` (qlora-formats.md §4.4): the causal-LM loss of the
// labelled tokens through the chunked head (never [tokens, vocab] logits), summed so the loop can
// divide by the label tokens of the whole accumulation window; entropy and token accuracy from
// the same chunks.
#pragma once

#include <vector>

#include "data/sft_dataset.h"
#include "trainer/training_objective.h"

namespace gemma {

class SftObjective : public TrainingObjective {
 public:
  SftObjective(std::vector<SftExample> train, std::vector<SftExample> eval, int64_t pad_id,
               bool padding_free, int64_t chunk_tokens = 1024);
  int64_t size(Split split) const override;
  int64_t loss_units(const std::vector<int64_t>& indices, Split split) const override;
  MicroBatchResult run(Gemma4ForCausalLM& model, const std::vector<int64_t>& indices, Split split,
                       double normalizer, bool backward) override;

 private:
  const std::vector<SftExample>& examples(Split split) const;
  std::vector<SftExample> train_, eval_;
  int64_t pad_id_;
  bool padding_free_;
  int64_t chunk_tokens_;
};

}  // namespace gemma
