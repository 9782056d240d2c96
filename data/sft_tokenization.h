// One dataset row turned into token ids and a label mask the way TRL 1.16's SFTTrainer prepares
// it (sft_trainer.py `_prepare_dataset`: add_eos, tokenize_fn, build_labels), before truncation;
// and plain text encoded as a transformers tokenizer call encodes it. Shared by read_sft_examples
// and validate-data.
#pragma once

#include <string>
#include <vector>

#include "data/dataset_rows.h"
#include "data/sft_dataset.h"
#include "data/tokenizer.h"

namespace gemma {

// `tokenizer(text)` of transformers on a Gemma tokenizer: `<bos>`, then the text with the
// vocabulary's control tokens (`<eos>`, `<|turn>`, ...) written in it recognised as those tokens,
// the text between them encoded as plain text. Never two `<bos>`: a text that starts with the
// string `<bos>` gets no second one (transformers would add it; gemma4-architecture.md §4.1).
std::vector<int> encode_text_with_bos(const Tokenizer& tokenizer, const std::string& text);

// TRL's add_eos: `eos_token` (as text) appended to a plain text or completion lacking it.
std::string with_eos(const std::string& text, const std::string& eos_token);

// The row's input_ids and labels_mask (masks ANDed: the prompt when completion_only_loss, all
// but the model's own tokens when assistant_only_loss), seq_lengths = {size}, origin = `where`.
// RowError (kNoTrainableTokens) for a conversation with no assistant token under
// assistant_only_loss, and (kMistypedField) for a plain-text row under assistant_only_loss.
SftExample tokenize_sft_row(const DatasetRow& row, const Tokenizer& tokenizer,
                            const SftDataOptions& options, bool completion_only_loss,
                            const std::string& where);

// The number of leading tokens `a` and `b` share (TRL's common_prefix_length): where the
// completion starts, which is not always after the tokenized prompt (qlora-formats.md §4.1).
size_t common_prefix_length(const std::vector<int>& a, const std::vector<int>& b);

// The rendered conversation's tokens (the checkpoint's template options from `options`).
ChatTokens tokenize_conversation(const std::vector<ChatMessage>& messages, const DatasetRow& row,
                                 const Tokenizer& tokenizer, const SftDataOptions& options,
                                 bool add_generation_prompt);

}  // namespace gemma
