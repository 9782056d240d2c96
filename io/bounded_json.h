// Every JSON input is parsed through here: its nesting is checked before nlohmann sees it, so a
// file or a JSONL row of 100 000 '[' is one InputError rather than a stack overflow later (the chat
// template renderer, dump() and operator== recurse into the value). Error messages quote at most
// a short excerpt of the input. Header-only, as the rest of io/ that data/ (no LibTorch) uses.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "io/input_error.h"

namespace gemma {

// Deeper than any config, tokenizer or tool schema (tokenizer.json: 5; a JSON schema of tool
// parameters rarely passes 20), shallow enough that recursion over the value is safe.
constexpr int kMaxJsonDepth = 128;

// The longest excerpt of an input an error message quotes.
constexpr size_t kMaxErrorExcerptBytes = 60;

// `text` cut to a short excerpt for an error message: at most kMaxErrorExcerptBytes bytes of it,
// cut at a UTF-8 character boundary, with "..." when cut; control characters written as \n, \t,
// \r or \xNN so that the message stays one line.
inline std::string error_excerpt(std::string_view text, size_t max_bytes = kMaxErrorExcerptBytes) {
  size_t end = text.size();
  if (end > max_bytes) {
    end = max_bytes;
    while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  }
  std::string out;
  out.reserve(end + 3);
  for (const char c : text.substr(0, end)) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte != 0x7f) {
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    }
  }
  if (end < text.size()) out += "...";
  return out;
}

// The deepest nesting of arrays and objects in `text` (strings skipped, escapes honoured), read
// without recursion; stops counting once past `limit` and returns the offset where it got there
// through `*offset`.
inline int json_nesting_depth(std::string_view text, int limit, size_t* offset) {
  int depth = 0;
  int deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > deepest) deepest = depth;
      if (deepest > limit) {
        *offset = i;
        return deepest;
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  *offset = text.size();
  return deepest;
}

// InputError "<where>: JSON nested deeper than 128 levels (at byte N)" when it is.
inline void check_json_depth(std::string_view text, const std::string& where,
                             int max_depth = kMaxJsonDepth) {
  size_t offset = 0;
  if (json_nesting_depth(text, max_depth, &offset) > max_depth)
    throw InputError(where + ": JSON nested deeper than " + std::to_string(max_depth) +
                     " levels (at byte " + std::to_string(offset + 1) + ")");
}

// nlohmann's message for a parse error, without its "[json.exception...]" prefix and with any
// quoted input ("last read: '...'") cut to a short excerpt.
inline std::string json_error_detail(const nlohmann::json::exception& e) {
  std::string detail = e.what();
  const size_t prefix = detail.find("] ");
  if (prefix != std::string::npos) detail = detail.substr(prefix + 2);
  const std::string marker = "last read: '";
  const size_t quote = detail.find(marker);
  if (quote == std::string::npos) return error_excerpt(detail, 200);
  // nlohmann quotes all it read of the bad token; keep its end, where the error is.
  const size_t start = quote + marker.size();
  size_t close = detail.rfind("'; expected");
  if (close == std::string::npos || close < start) close = detail.rfind('\'');
  if (close == std::string::npos || close < start) close = detail.size();
  std::string token = detail.substr(start, close - start);
  if (token.size() > kMaxErrorExcerptBytes) {
    size_t from = token.size() - kMaxErrorExcerptBytes;
    while (from < token.size() && (static_cast<unsigned char>(token[from]) & 0xC0) == 0x80) ++from;
    token = "..." + token.substr(from);
  }
  return error_excerpt(detail.substr(0, start) + token + detail.substr(close), 200);
}

// Parses `text` after checking its nesting. nlohmann's exceptions (parse_error and others)
// propagate for the caller to word, as nlohmann::json::parse's do; json_error_detail() words them
// briefly.
inline nlohmann::json parse_bounded_json(std::string_view text, const std::string& where,
                                         int max_depth = kMaxJsonDepth) {
  check_json_depth(text, where, max_depth);
  return nlohmann::json::parse(text.begin(), text.end());
}

// Parses `text` as one InputError-reporting step: "<where>: not valid JSON: <detail>".
inline nlohmann::json parse_json_input(std::string_view text, const std::string& where,
                                       int max_depth = kMaxJsonDepth) {
  check_json_depth(text, where, max_depth);
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    throw InputError(where + ": not valid JSON: " + json_error_detail(e));
  }
}

}  // namespace gemma
