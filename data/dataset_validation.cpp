#include "data/dataset_validation.h"

#include <algorithm>
#include <unordered_map>

#include "data/dataset_rows.h"
#include "data/jsonl_reader.h"
#include "data/sft_tokenization.h"

namespace gemma {
namespace {

bool sft_kind(DatasetKind kind) {
  return kind == DatasetKind::kText || kind == DatasetKind::kChat ||
         kind == DatasetKind::kCompletion;
}

// A prompt and one continuation (chosen, rejected, completion) as the preference trainers
// tokenize them: one conversation, or <bos> + prompt + continuation + <eos>.
int64_t pair_tokens(const DatasetRow& row, const RowPart& prompt, const RowPart& continuation,
                    const Tokenizer& tokenizer, const SftDataOptions& options) {
  if (row.conversational) {
    std::vector<ChatMessage> all = prompt.messages;
    all.insert(all.end(), continuation.messages.begin(), continuation.messages.end());
    return static_cast<int64_t>(
        tokenize_conversation(all, row, tokenizer, options, false).ids.size());
  }
  return static_cast<int64_t>(
             encode_text_with_bos(tokenizer, prompt.text + continuation.text).size()) +
         1;
}

int64_t preference_tokens(const DatasetRow& row, const Tokenizer& tokenizer,
                          const SftDataOptions& options) {
  if (row.kind == DatasetKind::kKto)
    return pair_tokens(row, row.prompt, row.completion, tokenizer, options);
  return std::max(pair_tokens(row, row.prompt, row.chosen, tokenizer, options),
                  pair_tokens(row, row.prompt, row.rejected, tokenizer, options));
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
    } else if (tokenizer) {
      tokens = preference_tokens(parsed, *tokenizer, options);
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
  if (r.over_length || r.duplicates || r.no_labels_after_truncation) {
    out += "notes (the trainer uses these rows): " + std::to_string(r.over_length) +
           " over max_length, " + std::to_string(r.duplicates) + " duplicates";
    if (r.no_labels_after_truncation)
      out += ", " + std::to_string(r.no_labels_after_truncation) +
             " with no label left after truncation (dropped)";
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
