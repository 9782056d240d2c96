// Preference rows -> TRL's DPO and KTO tokenization (qlora-formats.md §4.1-4.3).
#include "data/preference_dataset.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "data/jsonl_reader.h"
#include "data/sft_tokenization.h"
#include "io/input_error.h"

namespace gemma {
namespace {

std::string file_list(const std::vector<std::filesystem::path>& files) {
  std::string out;
  for (const auto& f : files) out += (out.empty() ? "" : ", ") + f.string();
  return out.empty() ? "(no files)" : out;
}

// `tokenizer(prompt)` and `tokenizer(prompt + completion)`, or the chat template of the prompt
// (with the generation prompt) and of prompt + completion.
std::vector<int> prompt_tokens(const DatasetRow& row, const Tokenizer& tokenizer,
                               const SftDataOptions& options) {
  if (row.conversational)
    return tokenize_conversation(row.prompt.messages, row, tokenizer, options, true).ids;
  return encode_text_with_bos(tokenizer, row.prompt.text);
}

std::vector<int> full_tokens(const DatasetRow& row, const RowPart& completion,
                             const Tokenizer& tokenizer, const SftDataOptions& options) {
  if (row.conversational) {
    std::vector<ChatMessage> all = row.prompt.messages;
    all.insert(all.end(), completion.messages.begin(), completion.messages.end());
    return tokenize_conversation(all, row, tokenizer, options, false).ids;
  }
  return encode_text_with_bos(tokenizer,
                              row.prompt.text + with_eos(completion.text, options.eos_token));
}

void require_nonempty(const RowPart& part, const char* name, const std::string& where) {
  if (!part.conversational && part.text.empty()) {
    throw RowError(RowProblem::kEmptyCompletion,
                   where + ": \"" + std::string(name) +
                       "\" is empty (a completion needs text to prefer or reject)");
  }
}

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
  return out + "]";
}

// What both readers share: rows of `accepted` kinds, bad ones skipped when asked; the kind of
// the first row decides, as TRL decides from dataset[0].
std::vector<std::pair<DatasetRow, std::string>> read_rows(
    const std::vector<std::filesystem::path>& files, const SftDataOptions& options,
    const std::vector<DatasetKind>& accepted, const char* trainer, PreferenceDataReport* r) {
  std::optional<DatasetKind> kind = options.kind;
  std::vector<std::pair<DatasetRow, std::string>> rows;
  const auto on_row = [&](const JsonlRow& row) {
    if (!kind) kind = detect_dataset_kind(row.value, row.where);
    if (std::find(accepted.begin(), accepted.end(), *kind) == accepted.end()) {
      throw InputError(row.where + ": " + trainer + " takes " +
                       (accepted.size() == 1 ? "preference rows (prompt, chosen, rejected)"
                                             : "prompt, completion, label rows or preference "
                                               "rows (prompt, chosen, rejected)") +
                       "; this file has " + dataset_kind_name(*kind) + " rows");
    }
    rows.emplace_back(parse_dataset_row(row.value, *kind, row.where), row.where);
  };
  r->rows = for_each_jsonl_row(files, on_row, [&](const RowError&) {
    if (!options.skip_invalid) throw;
    ++r->skipped_invalid;
  });
  r->kind = kind.value_or(accepted.front());
  if (r->rows == 0) throw InputError(file_list(files) + ": no rows (empty dataset)");
  if (r->skipped_invalid == r->rows) {
    throw InputError(file_list(files) + ": no valid rows (all " + std::to_string(r->rows) +
                     " rows are bad and were skipped)");
  }
  return rows;
}

void require_examples(size_t kept, const std::vector<std::filesystem::path>& files,
                      const SftDataOptions& options, const PreferenceDataReport& r) {
  if (kept > 0) return;
  throw InputError(file_list(files) + ": no example left (" +
                   std::to_string(r.dropped_long_prompt) + " of " +
                   std::to_string(r.rows - r.skipped_invalid) +
                   " rows dropped: their prompt alone is at least max_length " +
                   std::to_string(options.max_length.value_or(0)) + " tokens)");
}

}  // namespace

PreferenceExample tokenize_preference_row(const DatasetRow& row, const Tokenizer& tokenizer,
                                          const SftDataOptions& options, const std::string& where) {
  if (row.kind != DatasetKind::kPreference) {
    throw InputError(where +
                     ": DPO takes preference rows (prompt, chosen, rejected); this row is " +
                     dataset_kind_name(row.kind));
  }
  require_nonempty(row.chosen, "chosen", where);
  require_nonempty(row.rejected, "rejected", where);
  const std::vector<int> prompt = prompt_tokens(row, tokenizer, options);
  const std::vector<int> chosen = full_tokens(row, row.chosen, tokenizer, options);
  const std::vector<int> rejected = full_tokens(row, row.rejected, tokenizer, options);
  const size_t prompt_len =
      std::min(common_prefix_length(prompt, chosen), common_prefix_length(prompt, rejected));
  if (chosen == rejected) {
    throw RowError(RowProblem::kIdenticalPair,
                   where + ": \"chosen\" and \"rejected\" are the same (the pair teaches nothing)");
  }
  PreferenceExample out;
  out.origin = where;
  out.prompt_ids.assign(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(prompt_len));
  out.prompt_tokens_left_out = prompt.size() - prompt_len;
  out.chosen_ids.assign(chosen.begin() + static_cast<std::ptrdiff_t>(prompt_len), chosen.end());
  out.rejected_ids.assign(rejected.begin() + static_cast<std::ptrdiff_t>(prompt_len),
                          rejected.end());
  return out;
}

KtoExample tokenize_kto_row(const DatasetRow& row, const Tokenizer& tokenizer,
                            const SftDataOptions& options, const std::string& where) {
  if (row.kind != DatasetKind::kKto) {
    throw InputError(where + ": KTO takes prompt, completion, label rows; this row is " +
                     dataset_kind_name(row.kind));
  }
  require_nonempty(row.completion, "completion", where);
  const std::vector<int> prompt = prompt_tokens(row, tokenizer, options);
  const std::vector<int> full = full_tokens(row, row.completion, tokenizer, options);
  const size_t prompt_len = common_prefix_length(prompt, full);
  KtoExample out;
  out.origin = where;
  out.label = row.label;
  out.prompt_ids.assign(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(prompt_len));
  out.prompt_tokens_left_out = prompt.size() - prompt_len;
  out.completion_ids.assign(full.begin() + static_cast<std::ptrdiff_t>(prompt_len), full.end());
  return out;
}

std::vector<DatasetRow> unpair_preference_rows(const std::vector<DatasetRow>& pairs) {
  std::vector<DatasetRow> out;
  out.reserve(2 * pairs.size());
  for (size_t start = 0; start < pairs.size(); start += kUnpairBatchRows) {
    const size_t end = std::min(pairs.size(), start + kUnpairBatchRows);
    for (const bool chosen : {true, false}) {
      for (size_t i = start; i < end; ++i) {
        DatasetRow row = pairs[i];
        row.kind = DatasetKind::kKto;
        row.completion = chosen ? pairs[i].chosen : pairs[i].rejected;
        row.chosen = row.rejected = RowPart{};
        row.label = chosen;
        out.push_back(std::move(row));
      }
    }
  }
  return out;
}

std::vector<PreferenceExample> read_preference_examples(
    const std::vector<std::filesystem::path>& files, const Tokenizer& tokenizer,
    const SftDataOptions& options, PreferenceDataReport* report) {
  PreferenceDataReport r;
  const std::vector<std::pair<DatasetRow, std::string>> rows =
      read_rows(files, options, {DatasetKind::kPreference}, "DPO", &r);
  const bool drop_long = options.max_length && options.truncation == SftTruncation::kKeepStart;
  std::vector<PreferenceExample> examples;
  for (const auto& [row, where] : rows) {
    PreferenceExample e;
    try {
      e = tokenize_preference_row(row, tokenizer, options, where);
    } catch (const RowError&) {
      if (!options.skip_invalid) throw;
      ++r.skipped_invalid;
      continue;
    }
    if (e.prompt_tokens_left_out > 0) ++r.prompt_not_prefix;
    if (drop_long && static_cast<int64_t>(e.prompt_ids.size()) >= *options.max_length) {
      ++r.dropped_long_prompt;
      continue;
    }
    r.tokens +=
        static_cast<int64_t>(2 * e.prompt_ids.size() + e.chosen_ids.size() + e.rejected_ids.size());
    examples.push_back(std::move(e));
  }
  if (report) *report = r;
  require_examples(examples.size(), files, options, r);
  return examples;
}

std::vector<KtoExample> read_kto_examples(const std::vector<std::filesystem::path>& files,
                                          const Tokenizer& tokenizer, const SftDataOptions& options,
                                          int64_t kl_batch_size, PreferenceDataReport* report) {
  PreferenceDataReport r;
  std::vector<std::pair<DatasetRow, std::string>> rows =
      read_rows(files, options, {DatasetKind::kKto, DatasetKind::kPreference}, "KTO", &r);
  std::vector<DatasetRow> unpaired;
  std::vector<std::string> where;
  if (r.kind == DatasetKind::kPreference) {
    std::vector<DatasetRow> pairs;
    std::vector<std::string> pair_where;
    for (auto& [row, w] : rows) {
      pairs.push_back(std::move(row));
      pair_where.push_back(std::move(w));
    }
    unpaired = unpair_preference_rows(pairs);
    for (size_t start = 0; start < pair_where.size(); start += kUnpairBatchRows) {
      const size_t end = std::min(pair_where.size(), start + kUnpairBatchRows);
      for (const char* side : {" (chosen)", " (rejected)"}) {
        for (size_t i = start; i < end; ++i) where.push_back(pair_where[i] + side);
      }
    }
  } else {
    for (auto& [row, w] : rows) {
      unpaired.push_back(std::move(row));
      where.push_back(std::move(w));
    }
  }
  rows.clear();
  std::vector<KtoExample> examples;
  for (size_t i = 0; i < unpaired.size(); ++i) {
    KtoExample e;
    try {
      e = tokenize_kto_row(unpaired[i], tokenizer, options, where[i]);
    } catch (const RowError&) {
      if (!options.skip_invalid) throw;
      ++r.skipped_invalid;
      continue;
    }
    if (e.prompt_tokens_left_out > 0) ++r.prompt_not_prefix;
    if (options.max_length && static_cast<int64_t>(e.prompt_ids.size()) >= *options.max_length) {
      ++r.dropped_long_prompt;
      continue;
    }
    ++(e.label ? r.desirable : r.undesirable);
    r.tokens += static_cast<int64_t>(e.prompt_ids.size() + e.completion_ids.size());
    examples.push_back(std::move(e));
  }
  if (report) *report = r;
  require_examples(examples.size(), files, options, r);
  if (kl_batch_size > 0) rotate_kl_completions(&examples, kl_batch_size);
  return examples;
}

void rotate_kl_completions(std::vector<KtoExample>* examples, int64_t group_size) {
  const auto group = static_cast<size_t>(group_size);
  for (size_t start = 0; start < examples->size(); start += group) {
    const size_t end = std::min(examples->size(), start + group);
    for (size_t i = start; i < end; ++i)
      (*examples)[i].kl_completion_ids = (*examples)[i == start ? end - 1 : i - 1].completion_ids;
  }
}

std::string preference_example_json(const PreferenceExample& e) {
  return "{\"prompt_ids\": " + ids_json(e.prompt_ids) +
         ", \"chosen_ids\": " + ids_json(e.chosen_ids) +
         ", \"rejected_ids\": " + ids_json(e.rejected_ids) +
         ", \"origin\": " + nlohmann::json(e.origin).dump() + "}";
}

std::string kto_example_json(const KtoExample& e) {
  return "{\"prompt_ids\": " + ids_json(e.prompt_ids) +
         ", \"completion_ids\": " + ids_json(e.completion_ids) +
         ", \"label\": " + (e.label ? "true" : "false") +
         (e.kl_completion_ids.empty()
              ? std::string()
              : ", \"kl_completion_ids\": " + ids_json(e.kl_completion_ids)) +
         ", \"origin\": " + nlohmann::json(e.origin).dump() + "}";
}

}  // namespace gemma
