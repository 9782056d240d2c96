// read_sft_examples: JSONL rows -> typed rows -> TRL's tokenization and masks -> truncation and
// the drop of rows with no label left (sft_trainer.py `_prepare_dataset`, qlora-formats.md §4.4).
#include "data/sft_dataset.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "data/chat_template.h"
#include "data/dataset_rows.h"
#include "data/jsonl_reader.h"
#include "data/sft_tokenization.h"
#include "io/bounded_json.h"
#include "io/input_error.h"

namespace gemma {
namespace {

using json = nlohmann::json;

std::string file_list(const std::vector<std::filesystem::path>& files) {
  std::string out;
  for (const auto& f : files) out += (out.empty() ? "" : ", ") + f.string();
  return out.empty() ? "(no files)" : out;
}

void truncate(SftExample* e, int64_t max_length, SftTruncation mode) {
  const auto n = static_cast<std::ptrdiff_t>(e->input_ids.size());
  const auto keep = static_cast<std::ptrdiff_t>(max_length);
  if (mode == SftTruncation::kKeepStart) {
    e->input_ids.resize(keep);
    e->labels_mask.resize(keep);
  } else {
    e->input_ids.erase(e->input_ids.begin(), e->input_ids.begin() + (n - keep));
    e->labels_mask.erase(e->labels_mask.begin(), e->labels_mask.begin() + (n - keep));
  }
  e->seq_lengths = {static_cast<int32_t>(keep)};
}

}  // namespace

void read_tokenizer_settings(const std::filesystem::path& model_dir, SftDataOptions* options) {
  const std::filesystem::path config = model_dir / "tokenizer_config.json";
  std::string template_text;
  if (std::filesystem::exists(config)) {
    json root;
    root = parse_json_input(read_text_file(config), config.string());
    const json eos = root.is_object() ? root.value("eos_token", json()) : json();
    if (eos.is_string()) {
      options->eos_token = eos.get<std::string>();
    } else if (eos.is_object() && eos.contains("content") && eos["content"].is_string()) {
      options->eos_token = eos["content"].get<std::string>();  // the AddedToken form
    }
    if (root.is_object() && root.contains("chat_template") && root["chat_template"].is_string())
      template_text = root["chat_template"].get<std::string>();
  }
  const std::filesystem::path jinja = model_dir / "chat_template.jinja";
  if (std::filesystem::exists(jinja)) template_text = read_text_file(jinja);
  if (!template_text.empty())
    options->empty_thought_channel = inspect_chat_template(template_text).empty_thought_channel;
}

std::vector<SftExample> read_sft_examples(const std::vector<std::filesystem::path>& files,
                                          const Tokenizer& tokenizer, const SftDataOptions& options,
                                          SftDataReport* report) {
  SftDataReport r;
  std::optional<DatasetKind> kind = options.kind;
  bool completion_only_loss = false;
  bool decided = false;  // the first good row decides what TRL decides from dataset[0]
  std::vector<SftExample> examples;
  int64_t labels = 0;
  const bool truncating = options.max_length && options.packing == SftPacking::kNone;
  const auto on_row = [&](const JsonlRow& row) {
    if (!kind) kind = detect_dataset_kind(row.value, row.where);
    if (!decided) {
      if (*kind == DatasetKind::kPreference || *kind == DatasetKind::kKto) {
        throw InputError(row.where + ": SFT takes text, messages or prompt/completion rows; " +
                         "this file has " + dataset_kind_name(*kind) + " rows (" +
                         (*kind == DatasetKind::kKto ? "prompt, completion, label: for KTO"
                                                     : "chosen, rejected: for DPO") +
                         ")");
      }
      // TRL: completion_only_loss=None means "prompt" and "completion" in dataset[0].
      completion_only_loss =
          options.completion_only_loss.value_or(*kind == DatasetKind::kCompletion);
    }
    const DatasetRow parsed = parse_dataset_row(row.value, *kind, row.where);
    SftExample e = tokenize_sft_row(parsed, tokenizer, options, completion_only_loss, row.where);
    decided = true;
    if (truncating && static_cast<int64_t>(e.input_ids.size()) > *options.max_length) {
      truncate(&e, *options.max_length, options.truncation);
      ++r.truncated;
    }
    const auto n = std::count(e.labels_mask.begin(), e.labels_mask.end(), 1);
    if (truncating && n == 0) {  // TRL filters these after truncation (not when packing)
      ++r.dropped_no_labels;
      return;
    }
    labels += n;
    r.tokens += static_cast<int64_t>(e.input_ids.size());
    examples.push_back(std::move(e));
  };
  r.rows = for_each_jsonl_row(files, on_row, [&](const RowError&) {
    if (!options.skip_invalid) throw;
    ++r.skipped_invalid;
  });
  r.kind = kind.value_or(DatasetKind::kText);
  if (report) *report = r;
  if (r.rows == 0) throw InputError(file_list(files) + ": no rows (empty dataset)");
  if (r.skipped_invalid == r.rows) {
    throw InputError(file_list(files) + ": no valid rows (all " + std::to_string(r.rows) +
                     " rows are bad and were skipped)");
  }
  if (examples.empty() || labels == 0) {
    throw InputError(file_list(files) + ": no trainable tokens after masking (" +
                     std::to_string(r.rows - r.skipped_invalid) + " rows, " +
                     std::to_string(r.dropped_no_labels) +
                     " of them with no label left after truncation to max_length)");
  }
  return examples;
}

std::string sft_example_json(const SftExample& e) {
  std::string out = "{\"input_ids\": [";
  for (size_t i = 0; i < e.input_ids.size(); ++i)
    out += (i ? ", " : "") + std::to_string(e.input_ids[i]);
  out += "], \"labels_mask\": [";
  for (size_t i = 0; i < e.labels_mask.size(); ++i) {
    if (i) out += ", ";
    out += e.labels_mask[i] ? '1' : '0';
  }
  out += "], \"seq_lengths\": [";
  for (size_t i = 0; i < e.seq_lengths.size(); ++i)
    out += (i ? ", " : "") + std::to_string(e.seq_lengths[i]);
  return out + "], \"origin\": " + json(e.origin).dump() + "}";
}

}  // namespace gemma
