#include "data/dataset_validation.h"

#include <algorithm>
#include <unordered_map>

#include "data/dataset_rows.h"
#include "data/jsonl_reader.h"
#include "data/preference_dataset.h"
#include "data/sft_tokenization.h"

namespace gemma {
namespace {

bool sft_kind(DatasetKind kind) {
  return kind == DatasetKind::kText || kind == DatasetKind::kChat ||
         kind == DatasetKind::kCompletion;
}

// Faults of preference rows that need no tokenizer: an empty completion string, chosen equal
// to rejected (the trainer refuses both; data/preference_dataset.h).
void check_preference_columns(const nlohmann::json& row, DatasetKind kind,
                              const std::string& where) {
  const std::vector<const char*> columns = kind == DatasetKind::kKto
                                               ? std::vector<const char*>{"completion"}
                                               : std::vector<const char*>{"chosen", "rejected"};
  for (const char* c : columns) {
    if (row[c].is_string() && row[c].get_ref<const std::string&>().empty()) {
      throw RowError(
          RowProblem::kEmptyCompletion,
          where + ": \"" + c + "\" is empty (a completion needs text to prefer or reject)");
    }
  }
  if (kind == DatasetKind::kPreference && row["chosen"] == row["rejected"]) {
    throw RowError(RowProblem::kIdenticalPair,
                   where + ": \"chosen\" and \"rejected\" are the same (the pair teaches nothing)");
  }
}

// A preference or KTO row as the trainer tokenizes it: the longest sequence (prompt + one
// completion) and the kept prompt's length.
struct PreferenceTokens {
  int64_t longest = 0;
  int64_t prompt = 0;
};

PreferenceTokens preference_tokens(const DatasetRow& row, const Tokenizer& tokenizer,
                                   const SftDataOptions& options, const std::string& where) {
  if (row.kind == DatasetKind::kKto) {
    const KtoExample e = tokenize_kto_row(row, tokenizer, options, where);
    return {static_cast<int64_t>(e.prompt_ids.size() + e.completion_ids.size()),
            static_cast<int64_t>(e.prompt_ids.size())};
  }
  const PreferenceExample e = tokenize_preference_row(row, tokenizer, options, where);
  return {static_cast<int64_t>(e.prompt_ids.size() +
                               std::max(e.chosen_ids.size(), e.rejected_ids.size())),
          static_cast<int64_t>(e.prompt_ids.size())};
}

}  // namespace

DatasetValidationReport validate_dataset(
    const std::vector<std::filesystem::path>& files, const Tokenizer* tokenizer,
    const SftDataOptions& options, const std::function<void(const std::string&)>& report_line) {
  DatasetValidationReport r;
  r.kind = options.kind;
  r.counted_tokens = tokenizer != nullptr;
  bool completion_only_loss = false;
  bool decided = false;
  // Rows are the same when their JSON is (keys compare sorted): hash of the canonical text ->
  // where it was first seen.
  std::unordered_map<size_t, std::string> seen;
  const bool packing = options.packing != SftPacking::kNone;
  const auto on_row = [&](const JsonlRow& row) {
    if (!r.kind) r.kind = detect_dataset_kind(row.value, row.where);
    if (!decided) {
      completion_only_loss =
          options.completion_only_loss.value_or(*r.kind == DatasetKind::kCompletion);
    }
    const DatasetRow parsed = parse_dataset_row(row.value, *r.kind, row.where);
    int64_t tokens = 0;
    if (tokenizer && sft_kind(*r.kind)) {
      const SftExample e =
          tokenize_sft_row(parsed, *tokenizer, options, completion_only_loss, row.where);
      tokens = static_cast<int64_t>(e.input_ids.size());
      const int64_t kept = options.max_length ? std::min(tokens, *options.max_length) : tokens;
      const auto begin = options.truncation == SftTruncation::kKeepStart
                             ? e.labels_mask.begin()
                             : e.labels_mask.end() - static_cast<std::ptrdiff_t>(kept);
      const auto labels = std::count(begin, begin + static_cast<std::ptrdiff_t>(kept), 1);
      r.labels += labels;
      if (labels == 0 && !packing && options.max_length) {
        ++r.no_labels_after_truncation;
        report_line(row.where + ": no label left after truncation to max_length " +
                    std::to_string(*options.max_length) + " (the trainer drops this row)");
      }
    } else {
      check_preference_columns(row.value, *r.kind, row.where);
      if (tokenizer) {
        const PreferenceTokens t = preference_tokens(parsed, *tokenizer, options, row.where);
        tokens = t.longest;
        // KTO drops these always, DPO under keep_start (TRL's filters).
        const bool dropped = options.max_length && t.prompt >= *options.max_length &&
                             (*r.kind != DatasetKind::kPreference ||
                              options.truncation == SftTruncation::kKeepStart);
        if (dropped) {
          ++r.prompt_over_length;
          report_line(row.where + ": the prompt alone is " + std::to_string(t.prompt) +
                      " tokens, at least max_length " + std::to_string(*options.max_length) +
                      " (the trainer drops this row)");
        }
      }
    }
    decided = true;
    r.tokens += tokens;
    if (tokens > r.longest) {
      r.longest = tokens;
      r.longest_where = row.where;
    }
    if (options.max_length && tokens > *options.max_length) {
      ++r.over_length;
      report_line(row.where + ": " + std::to_string(tokens) + " tokens, over max_length " +
                  std::to_string(*options.max_length) +
                  (packing ? " (packing cuts it to max_length)"
                   : options.truncation == SftTruncation::kKeepStart
                       ? " (the trainer keeps its start)"
                       : " (the trainer keeps its end)"));
    }
    const auto [it, fresh] = seen.emplace(std::hash<std::string>{}(row.value.dump()), row.where);
    if (!fresh) {
      ++r.duplicates;
      report_line(row.where + ": duplicate row: the same content as " + it->second);
    }
  };
  r.rows = for_each_jsonl_row(files, on_row, [&](const RowError& e) {
    ++r.bad_rows;
    ++r.bad_by_reason[row_problem_name(e.problem())];
    report_line(e.what());
  });
  return r;
}

std::string validation_summary(const DatasetValidationReport& r, const SftDataOptions& options) {
  std::string out = std::to_string(r.rows) + " rows";
  if (r.kind) out += std::string(" of ") + dataset_kind_name(*r.kind) + " data";
  out += ", " + std::to_string(r.bad_rows) + " bad";
  if (!r.bad_by_reason.empty()) {
    std::string reasons;
    for (const auto& [reason, n] : r.bad_by_reason)
      reasons += (reasons.empty() ? "" : ", ") + reason + " " + std::to_string(n);
    out += " (" + reasons + ")";
  }
  out += "\n";
  if (r.over_length || r.duplicates || r.no_labels_after_truncation || r.prompt_over_length) {
    out += "notes (the trainer uses these rows): " + std::to_string(r.over_length) +
           " over max_length, " + std::to_string(r.duplicates) + " duplicates";
    if (r.no_labels_after_truncation)
      out += ", " + std::to_string(r.no_labels_after_truncation) +
             " with no label left after truncation (dropped)";
    if (r.prompt_over_length)
      out += ", " + std::to_string(r.prompt_over_length) +
             " whose prompt alone fills max_length (dropped)";
    out += "\n";
  }
  if (!r.counted_tokens) return out + "tokens: not counted (no tokenizer: give --model)\n";
  out += "tokens: " + std::to_string(r.tokens);
  if (r.kind && sft_kind(*r.kind)) out += ", of them labels: " + std::to_string(r.labels);
  if (r.longest > 0)
    out += "; longest row " + std::to_string(r.longest) + " (" + r.longest_where + ")";
  if (options.max_length) out += "; max_length " + std::to_string(*options.max_length);
  return out + "\n";
}

}  // namespace gemma
