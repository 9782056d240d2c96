// SFT micro-batches as TRL 1.16's DataCollatorForLanguageModeling builds them (qlora-formats.md
// §4.4): rows padded on the right with the pad id and an attention mask, labels = input_ids where
// the example's mask is 1 and -100 elsewhere; or, padding-free (packing bfd, padding_free), every
// example of the micro-batch in one row with positions restarting at each document and no mask.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "data/sft_dataset.h"

namespace gemma {

struct SftBatch {
  torch::Tensor input_ids;       // [B, T] int64
  torch::Tensor attention_mask;  // [B, T] int64; undefined when padding-free
  torch::Tensor position_ids;    // [1, N] int64 restarting per document; undefined when padded
  torch::Tensor labels;          // [B, T] int64, not shifted (the loss shifts)
  int64_t num_tokens = 0;        // TRL's num_tokens: attention-mask sum, or the row length
  int64_t loss_tokens = 0;       // labels that count after the shift (labels[:, 1:] != -100)
};

SftBatch collate_sft(const std::vector<const SftExample*>& examples, int64_t pad_id,
                     bool padding_free);

// The loss tokens of one example once collated (its labels after the first token).
int64_t sft_loss_tokens(const SftExample& example);

}  // namespace gemma
