// Micro-batches of prompt + completion sequences as TRL 1.16's preference collators build them
// (dpo_trainer.py DataCollatorForPreference, kto_trainer.py DataCollatorForUnpairedPreference):
// each sequence is prompt_ids + completion_ids cut to max_length (keep_start: its first tokens;
// keep_end: its last), right-padded with the pad id, with an attention mask and labels = the
// tokens of the completion (-100 elsewhere). DPO stacks the B chosen rows over the B rejected
// ones, one forward for both.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <torch/torch.h>

#include "data/preference_dataset.h"
#include "data/sft_dataset.h"

namespace gemma {

struct SequenceBatch {
  torch::Tensor input_ids;       // [N, T] int64
  torch::Tensor attention_mask;  // [N, T] int64
  torch::Tensor labels;          // [N, T] int64, not shifted; kIgnoreIndex outside completions
  torch::Tensor
      completion_tokens;   // [N] int64: completion tokens kept (TRL's completion_mask sums)
  int64_t num_tokens = 0;  // attention-mask sum
};

struct PromptCompletion {
  const std::vector<int32_t>* prompt;
  const std::vector<int32_t>* completion;
};

SequenceBatch collate_sequences(const std::vector<PromptCompletion>& rows, int64_t pad_id,
                                std::optional<int64_t> max_length, SftTruncation truncation);

// DPO: rows 0..B-1 prompt + chosen, rows B..2B-1 prompt + rejected.
SequenceBatch collate_preference(const std::vector<const PreferenceExample*>& examples,
                                 int64_t pad_id, std::optional<int64_t> max_length,
                                 SftTruncation truncation);

}  // namespace gemma
