#include "peft/target_regex.h"

#include <re2/re2.h>

#include <nlohmann/json.hpp>

#include "io/bounded_json.h"
#include "io/input_error.h"

namespace gemma {

namespace {

// `text` cut short and quoted as a JSON string, so a newline or a control character in a pattern
// cannot break the one-line error message.
std::string quoted(const std::string& text) {
  return nlohmann::json(error_excerpt(text))
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// RE2's reason ("invalid escape sequence: \1"), its quoted part cut short.
std::string re2_reason(const re2::RE2& re) {
  const std::string& error = re.error();
  const std::string& arg = re.error_arg();
  const std::string tail = ": " + arg;
  if (arg.empty() || error.size() < tail.size() ||
      error.compare(error.size() - tail.size(), tail.size(), tail) != 0)
    return error_excerpt(error, 200);
  return error.substr(0, error.size() - tail.size()) + ": " + quoted(arg);
}

// Where `pattern` has a repetition spelt {,n} (or {,}) outside a character class: Python's re
// reads it as {0,n}, RE2 as plain text, so the two would match different paths. npos if none.
size_t python_only_repetition(const std::string& pattern) {
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\') {
      ++i;  // the escaped character
    } else if (in_class) {
      if (c == ']') in_class = false;
    } else if (c == '[') {
      in_class = true;
      // A ']' first in the class (after an optional '^') is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') ++i;
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') ++i;
    } else if (c == '{' && i + 1 < pattern.size() && pattern[i + 1] == ',') {
      size_t j = i + 2;
      while (j < pattern.size() && pattern[j] >= '0' && pattern[j] <= '9') ++j;
      if (j < pattern.size() && pattern[j] == '}') return i;
    }
  }
  return std::string::npos;
}

}  // namespace

TargetRegex::TargetRegex(const std::string& pattern, const std::string& where) {
  const std::string head = where + ": regular expression " + quoted(pattern);
  if (pattern.size() > kMaxTargetRegexBytes)
    throw InputError(head + " is " + std::to_string(pattern.size()) +
                     " bytes long, over the limit of " + std::to_string(kMaxTargetRegexBytes));
  if (const size_t at = python_only_repetition(pattern); at != std::string::npos)
    throw InputError(head + " cannot be used: the repetition at byte " + std::to_string(at + 1) +
                     " is spelt {,n}, which Python's re (and so PEFT) reads as {0,n} but RE2 as "
                     "text; write {0,n}");
  re2::RE2::Options options;
  options.set_log_errors(false);  // RE2 would log to stderr; the InputError says it instead
  options.set_max_mem(kMaxTargetRegexMemory);
  re_ = std::make_unique<re2::RE2>(pattern, options);
  if (re_->ok()) return;
  std::string message = head + " cannot be used: " + re2_reason(*re_);
  switch (re_->error_code()) {
    case re2::RE2::ErrorBadEscape:
    case re2::RE2::ErrorBadPerlOp:
    case re2::RE2::ErrorRepeatOp:
      message +=
          " (gemma-train matches with RE2, in time linear in the module path: no "
          "backreferences, lookarounds, atomic groups or possessive quantifiers)";
      break;
    case re2::RE2::ErrorPatternTooLarge:
      message += " (it needs more than " + std::to_string(kMaxTargetRegexMemory >> 20) +
                 " MiB compiled; simplify the repetitions)";
      break;
    default:
      break;
  }
  throw InputError(message);
}

TargetRegex::~TargetRegex() = default;
TargetRegex::TargetRegex(TargetRegex&&) noexcept = default;
TargetRegex& TargetRegex::operator=(TargetRegex&&) noexcept = default;

void check_target_regex(const std::string& pattern, const std::string& where) {
  const TargetRegex compiled(pattern, where);
}

bool TargetRegex::full_match(const std::string& path) const {
  return re2::RE2::FullMatch(path, *re_);
}

}  // namespace gemma
