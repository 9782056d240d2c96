// JsonlReader: a JSONL file read one line at a time (never the whole file), each non-blank line
// checked (bounded length, UTF-8, JSON) and parsed; what the dataset readers stand on. A bad
// line is a RowError naming file:line, after which reading goes on with the next line.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/input_error.h"

namespace gemma {

// Why a row is bad, as validate-data counts them (row_problem_name gives the summary's words).
enum class RowProblem {
  kLineTooLong,
  kInvalidUtf8,
  kInvalidJson,
  kNotAnObject,
  kUnknownColumns,    // no column names a dataset shape (detection) or a shape of another trainer
  kAmbiguousColumns,  // columns of two shapes: "prompt" beside "messages"
  kMissingField,
  kMistypedField,
  kUnknownRole,
  kTurnOrder,
  kEmptyModelTurn,
  kNoTrainableTokens,  // assistant_only_loss on a conversation with no assistant token
  kIdenticalPair,      // a preference row whose chosen and rejected are the same
  kEmptyCompletion,    // a preference or KTO completion that is an empty string
};
const char* row_problem_name(RowProblem problem);

// An InputError about one row: the message names file:line; `problem` says which kind.
class RowError : public InputError {
 public:
  RowError(RowProblem problem, const std::string& message)
      : InputError(message), problem_(problem) {}
  RowProblem problem() const { return problem_; }

 private:
  RowProblem problem_;
};

constexpr size_t kMaxJsonlLineBytes = size_t{64} << 20;  // 64 MiB: one row, however long its text

struct JsonlRow {
  int64_t line = 0;      // 1-based
  std::string where;     // "file:line"
  nlohmann::json value;  // the parsed line
};

class JsonlReader {
 public:
  // `display` names the file in messages (the path as given). InputError if it cannot be opened.
  explicit JsonlReader(const std::filesystem::path& path,
                       size_t max_line_bytes = kMaxJsonlLineBytes);

  // The next non-blank line, parsed; false at the end of the file. A bad line throws RowError
  // (the reader is then positioned after it, so the caller may skip it and call next() again);
  // a read failure is an InputError.
  bool next(JsonlRow* row);

  const std::string& file() const { return file_; }

 private:
  // Reads one line into `text` (without its '\n'); false at the end. A line longer than the
  // limit is consumed to its end and reported through `too_long`.
  bool read_line(std::string* text, bool* too_long);

  std::string file_;
  std::ifstream in_;
  size_t max_line_bytes_;
  int64_t line_ = 0;
};

// Every row of `files`, in order, given to `on_row`. A RowError, the reader's (a line too long,
// not UTF-8, not JSON) or one `on_row` throws, goes to `on_error`, called inside the handler so
// that a `throw;` there rethrows it; otherwise reading goes on with the next line. Anything else (a
// file that cannot be opened or read, another InputError from `on_row`) propagates. Returns the
// number of rows: every non-blank line, those that never became a row included.
int64_t for_each_jsonl_row(const std::vector<std::filesystem::path>& files,
                           const std::function<void(const JsonlRow&)>& on_row,
                           const std::function<void(const RowError&)>& on_error);

// The byte offset of the first invalid UTF-8 sequence in `text`, or npos when it is valid
// (overlong forms, surrogates and code points above U+10FFFF are invalid).
size_t find_invalid_utf8(const std::string& text);

// Parses one JSON text; a syntax error is a RowError "where: invalid JSON at column N: ...".
nlohmann::json parse_json_row(const std::string& text, const std::string& where);

}  // namespace gemma
