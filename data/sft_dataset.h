// The SFT dataset as TRL 1.16's SFTTrainer prepares it (qlora-formats.md §4.1, §4.4): JSONL rows of
// a TRL shape (language modelling `text` or `messages`, prompt/completion plain or conversational)
// tokenized, masked, truncated and, when asked, packed; what the trainer batches. No LibTorch.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace gemma {

// TRL's dataset shapes (trl/data_utils.py), as data.kind names them.
enum class DatasetKind { kText, kChat, kCompletion, kPreference, kKto };

enum class SftTruncation { kKeepStart, kKeepEnd };
enum class SftPacking { kNone, kBfd, kWrapped };

struct SftDataOptions {
  std::optional<DatasetKind> kind;           // unset: detected from the first row's columns, as TRL
  std::optional<int64_t> max_length = 1024;  // unset: no truncation
  SftTruncation truncation = SftTruncation::kKeepStart;
  SftPacking packing = SftPacking::kNone;
  std::optional<bool> completion_only_loss;  // unset: on for prompt/completion data
  bool assistant_only_loss = false;          // conversational rows: only the model's own tokens
  bool skip_invalid = false;                 // count and skip bad rows instead of refusing them
  // The tokenizer's eos_token (tokenizer_config.json), appended as text to plain texts and
  // completions that do not end with it, as TRL does; copies of Gemma 4 say <eos> or <turn|>.
  std::string eos_token = "<eos>";
  // The checkpoint's template revision (chat_template.h, inspect_chat_template).
  bool empty_thought_channel = false;
};

// Fills eos_token and empty_thought_channel from a model folder's tokenizer_config.json and
// chat_template.jinja, where it has them (read_sft_examples itself sees only the tokenizer).
void read_tokenizer_settings(const std::filesystem::path& model_dir, SftDataOptions* options);

// One training sequence. `labels_mask[t]` = 1 when token t is a label (counts in the loss; TRL's
// labels = input_ids where the mask is 1, else -100, before the model's shift). Packed sequences
// hold several documents: `seq_lengths` their lengths in order (summing to input_ids.size()),
// positions restart at 0 at each, and a document's first token is never a label.
struct SftExample {
  std::vector<int32_t> input_ids;
  std::vector<uint8_t> labels_mask;
  std::vector<int32_t> seq_lengths;  // one entry when not packed
  std::string origin;                // "file:line" of its (first) row, for messages
};

// What preparation did, for the log and for validate-data.
struct SftDataReport {
  DatasetKind kind = DatasetKind::kText;
  int64_t rows = 0;               // rows read
  int64_t skipped_invalid = 0;    // bad rows skipped (skip_invalid)
  int64_t truncated = 0;          // rows cut to max_length
  int64_t dropped_no_labels = 0;  // rows with no label left after masking and truncation (dropped)
  int64_t tokens = 0;             // tokens in the returned examples
};

// Reads `files` in order (JSONL, one row per line; blank lines are not rows) and returns the
// examples in dataset order, unpacked. Bad rows (invalid JSON, a missing or mistyped field, an
// unknown role, ...) are an InputError naming file:line and what was expected, unless
// skip_invalid. A dataset with no example left is an InputError.
std::vector<SftExample> read_sft_examples(const std::vector<std::filesystem::path>& files,
                                          const Tokenizer& tokenizer, const SftDataOptions& options,
                                          SftDataReport* report = nullptr);

// TRL's packing of prepared examples into sequences of at most `max_length` tokens: bfd (best fit
// decreasing per batch of 1000 rows, positions restart per document) or wrapped (concatenated and
// cut every max_length tokens).
std::vector<SftExample> pack_sft_examples(const std::vector<SftExample>& examples,
                                          int64_t max_length, SftPacking packing);

// TRL's preparation batch: bfd and wrapped pack within each run of this many rows
// (datasets.map(batched=True)'s default batch_size).
constexpr size_t kSftPackingBatchRows = 1000;

// One example as a JSONL line (no newline): {"input_ids": [...], "labels_mask": [...],
// "seq_lengths": [...], "origin": "file:3"}, what validate-data --dump writes.
std::string sft_example_json(const SftExample& example);

}  // namespace gemma
