// Preference data as TRL 1.16's DPOTrainer and KTOTrainer prepare it (dpo_trainer.py and
// kto_trainer.py `_prepare_dataset`; qlora-formats.md §4.1-4.3): the prompt extracted when
// implicit (dataset_rows), paired rows unpaired for KTO, eos appended to plain completions, the
// prompt tokenized alone and with each completion, split where the two first differ, and rows
// whose prompt alone fills max_length dropped. Truncation of prompt + completion to max_length
// happens when batching (TRL's collators). No LibTorch.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/dataset_rows.h"
#include "data/sft_dataset.h"
#include "data/tokenizer.h"

namespace gemma {

// A DPO pair: the sequences are prompt_ids + chosen_ids and prompt_ids + rejected_ids.
struct PreferenceExample {
  std::vector<int32_t> prompt_ids, chosen_ids, rejected_ids;
  // Tokens at the end of the tokenized prompt that prompt + completion does not start with (a
  // merge across the boundary, or a template that renders the prompt alone differently): TRL
  // leaves them out and warns.
  size_t prompt_tokens_left_out = 0;
  std::string origin;  // "file:line"
};

// A KTO row: prompt_ids + completion_ids, desirable or not; kl_completion_ids is the completion
// of the neighbouring row (TRL's rotation, read_kto_examples) for the KL estimate.
struct KtoExample {
  std::vector<int32_t> prompt_ids, completion_ids, kl_completion_ids;
  bool label = false;
  size_t prompt_tokens_left_out = 0;  // as PreferenceExample's
  std::string origin;
};

// TRL's tokenize_fn of DPO for one preference row. RowError (kIdenticalPair) when chosen and
// rejected are the same (after the prompt), (kEmptyCompletion) when one is an empty string: the
// pair teaches nothing (TRL trains on it; docs/data.md).
PreferenceExample tokenize_preference_row(const DatasetRow& row, const Tokenizer& tokenizer,
                                          const SftDataOptions& options, const std::string& where);

// TRL's tokenize_fn of KTO for one unpaired row (kind kKto). RowError (kEmptyCompletion) for an
// empty completion string.
KtoExample tokenize_kto_row(const DatasetRow& row, const Tokenizer& tokenizer,
                            const SftDataOptions& options, const std::string& where);

// TRL's unpair_preference_dataset: per batch of up to kUnpairBatchRows pairs, the chosen rows
// (label true) and then the same pairs' rejected rows (label false), as kKto rows.
std::vector<DatasetRow> unpair_preference_rows(const std::vector<DatasetRow>& pairs);
constexpr size_t kUnpairBatchRows = 1000;  // datasets.map(batched=True)'s default batch_size

struct PreferenceDataReport {
  DatasetKind kind = DatasetKind::kPreference;  // what the files hold
  int64_t rows = 0;                             // rows read
  int64_t skipped_invalid = 0;                  // bad rows skipped (skip_invalid)
  int64_t dropped_long_prompt = 0;              // prompt alone >= max_length (TRL's filter)
  int64_t prompt_not_prefix = 0;           // the tokenized prompt is longer than the shared start
  int64_t desirable = 0, undesirable = 0;  // KTO rows by label, after the filter
  int64_t tokens = 0;                      // prompt + completions of the kept examples
};

// DPO's training set from JSONL preference rows, in dataset order. Bad rows are an InputError
// naming file:line unless options.skip_invalid; rows of another shape are refused. Under
// keep_start truncation rows whose prompt alone is at least max_length tokens are dropped
// (counted). No example left is an InputError.
std::vector<PreferenceExample> read_preference_examples(
    const std::vector<std::filesystem::path>& files, const Tokenizer& tokenizer,
    const SftDataOptions& options, PreferenceDataReport* report = nullptr);

// KTO's training set: unpaired rows, or preference rows unpaired as TRL does; rows whose prompt
// alone is at least max_length tokens dropped; then, when kl_batch_size > 0, each row's
// kl_completion_ids is the completion of the row before it within consecutive groups of
// kl_batch_size rows (the first takes the group's last), TRL's add_kl_completion_ids over
// batches of per_device_train_batch_size.
std::vector<KtoExample> read_kto_examples(const std::vector<std::filesystem::path>& files,
                                          const Tokenizer& tokenizer, const SftDataOptions& options,
                                          int64_t kl_batch_size,
                                          PreferenceDataReport* report = nullptr);

// Each example's kl_completion_ids := the completion of the one before it within consecutive
// groups of `group_size` (the first of a group takes the group's last).
void rotate_kl_completions(std::vector<KtoExample>* examples, int64_t group_size);

// validate-data --dump lines (no newline): {"prompt_ids": [...], "chosen_ids": [...],
// "rejected_ids": [...], "origin": ...} and {"prompt_ids", "completion_ids", "label",
// "kl_completion_ids" (when rotated), "origin"}.
std::string preference_example_json(const PreferenceExample& example);
std::string kto_example_json(const KtoExample& example);

}  // namespace gemma
