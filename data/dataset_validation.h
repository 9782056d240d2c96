// validate-data's checks: every row of a dataset read as the trainer reads it (JSONL lines,
// columns, roles, turn order, model turns, token counts against max_length, duplicates), each
// finding reported as one "file:line: ..." line, then a summary.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "data/sft_dataset.h"
#include "data/tokenizer.h"

namespace gemma {

struct DatasetValidationReport {
  std::optional<DatasetKind> kind;  // unset: no row told
  int64_t rows = 0;                 // non-blank lines
  int64_t bad_rows = 0;             // rows the trainer refuses (they fail validate-data)
  std::map<std::string, int64_t> bad_by_reason;  // row_problem_name -> rows
  // Findings about good rows: the trainer uses them (truncating long ones), so they only inform.
  int64_t over_length = 0;
  int64_t duplicates = 0;
  int64_t no_labels_after_truncation = 0;  // rows the SFT preparation drops
  int64_t prompt_over_length = 0;          // preference rows the DPO/KTO preparation drops
  bool counted_tokens = false;             // a tokenizer was given
  int64_t tokens = 0;                      // over good rows, before truncation
  int64_t labels = 0;                      // SFT rows: tokens that count in the loss
  int64_t longest = 0;
  std::string longest_where;
};

// Checks `files` in order as `options` (kind, masks, max_length, packing) says the trainer reads
// them; `tokenizer` may be null (no token counts, no length check). Each finding is handed to
// `report_line` as it is found, in file order. An unreadable file is an InputError.
DatasetValidationReport validate_dataset(
    const std::vector<std::filesystem::path>& files, const Tokenizer* tokenizer,
    const SftDataOptions& options, const std::function<void(const std::string&)>& report_line);

// The summary, several lines: rows, bad rows by reason, notes, tokens and the longest row.
std::string validation_summary(const DatasetValidationReport& report,
                               const SftDataOptions& options);

}  // namespace gemma
