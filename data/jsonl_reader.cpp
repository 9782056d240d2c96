#include "data/jsonl_reader.h"

#include <array>

#include "io/bounded_json.h"
#include "io/file_identity.h"

namespace gemma {

const char* row_problem_name(RowProblem problem) {
  switch (problem) {
    case RowProblem::kLineTooLong:
      return "line too long";
    case RowProblem::kInvalidUtf8:
      return "invalid UTF-8";
    case RowProblem::kInvalidJson:
      return "invalid JSON";
    case RowProblem::kNotAnObject:
      return "not a JSON object";
    case RowProblem::kUnknownColumns:
      return "columns of no SFT shape";
    case RowProblem::kAmbiguousColumns:
      return "ambiguous columns";
    case RowProblem::kMissingField:
      return "missing field";
    case RowProblem::kMistypedField:
      return "mistyped field";
    case RowProblem::kUnknownRole:
      return "unknown role";
    case RowProblem::kTurnOrder:
      return "turns out of order";
    case RowProblem::kEmptyModelTurn:
      return "empty model turn";
    case RowProblem::kNoTrainableTokens:
      return "no assistant tokens";
    case RowProblem::kIdenticalPair:
      return "chosen equals rejected";
    case RowProblem::kEmptyCompletion:
      return "empty completion";
  }
  return "bad row";
}

JsonlReader::JsonlReader(const std::filesystem::path& path, size_t max_line_bytes)
    : file_(path.string()), max_line_bytes_(max_line_bytes) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw InputError(file_ + ": is a folder, not a JSONL file");
  // Checked before opening: opening a FIFO would wait for a writer.
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec))
    throw InputError(file_ + ": not a regular file");
  in_.open(path, std::ios::binary);
  if (!in_) throw InputError(file_ + ": cannot open");
  note_input_file(path);
}

bool JsonlReader::read_line(std::string* text, bool* too_long) {
  text->clear();
  *too_long = false;
  std::array<char, 1 << 16> buf{};
  bool any = false;
  while (true) {
    in_.getline(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto count = static_cast<size_t>(in_.gcount());
    if (in_.bad()) throw InputError(file_ + ":" + std::to_string(line_ + 1) + ": read failed");
    if (in_.eof()) {  // the last line, without a '\n' (or nothing at all)
      any = any || count > 0;
      if (!*too_long) text->append(buf.data(), count);
      if (text->size() > max_line_bytes_) *too_long = true;
      return any;
    }
    if (in_.fail()) {  // the buffer filled before the end of the line
      in_.clear();
      any = true;
      if (!*too_long) text->append(buf.data(), count);
      if (text->size() > max_line_bytes_) {
        *too_long = true;
        text->clear();  // the rest of the line is consumed, not kept
      }
      continue;
    }
    if (!*too_long) text->append(buf.data(), count - 1);  // count includes the '\n'
    if (text->size() > max_line_bytes_) *too_long = true;
    return true;
  }
}

bool JsonlReader::next(JsonlRow* row) {
  std::string text;
  bool too_long = false;
  while (read_line(&text, &too_long)) {
    ++line_;
    const std::string where = file_ + ":" + std::to_string(line_);
    if (too_long) {
      throw RowError(RowProblem::kLineTooLong, where + ": line longer than " +
                                                   std::to_string(max_line_bytes_ >> 20) +
                                                   " MiB (the limit for one JSONL row)");
    }
    if (!text.empty() && text.back() == '\r') text.pop_back();         // CRLF files
    if (text.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines are no rows
    const size_t bad = find_invalid_utf8(text);
    if (bad != std::string::npos) {
      throw RowError(RowProblem::kInvalidUtf8, where + ": not valid UTF-8 at byte " +
                                                   std::to_string(bad + 1) +
                                                   " of the line (JSONL rows are UTF-8 text)");
    }
    nlohmann::json value = parse_json_row(text, where);
    row->line = line_;
    row->where = where;
    row->value = std::move(value);
    return true;
  }
  return false;
}

int64_t for_each_jsonl_row(const std::vector<std::filesystem::path>& files,
                           const std::function<void(const JsonlRow&)>& on_row,
                           const std::function<void(const RowError&)>& on_error) {
  int64_t rows = 0;
  for (const std::filesystem::path& file : files) {
    JsonlReader reader(file);
    while (true) {
      JsonlRow row;
      try {
        if (!reader.next(&row)) break;
        ++rows;
        on_row(row);
      } catch (const RowError& e) {
        if (row.where.empty()) ++rows;  // a line that never became a row (too long, UTF-8, JSON)
        on_error(e);
      }
    }
  }
  return rows;
}

size_t find_invalid_utf8(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned cp = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    static constexpr std::array<unsigned, 5> kMin = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string::npos;
}

nlohmann::json parse_json_row(const std::string& text, const std::string& where) {
  try {
    check_json_depth(text, where);
  } catch (const InputError& e) {
    throw RowError(RowProblem::kInvalidJson, e.what());
  }
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // nlohmann's message: "[json.exception.parse_error.101] parse error at line 1, column 7: ..."
    std::string detail = json_error_detail(e);
    const size_t column = detail.find("column ");
    if (column != std::string::npos) detail = detail.substr(column);
    throw RowError(RowProblem::kInvalidJson, where + ": invalid JSON at " + detail);
  } catch (const nlohmann::json::exception& e) {  // e.g. a number too large for a double
    throw RowError(RowProblem::kInvalidJson, where + ": invalid JSON: " + json_error_detail(e));
  }
}

}  // namespace gemma
