// Target-module regular expressions from users (`--target-regex`, a recipe's string
// peft.target_modules, a string target_modules in adapter_config.json), compiled by RE2: matching
// takes time linear in the module path whatever the pattern, so `(a+)+$` cannot hang a run the way
// a backtracking engine (std::regex, Python's re) can. RE2's syntax is Python's for everything a
// module-path pattern needs (classes, alternation, repetition, groups, \d, \w, anchors); what RE2
// cannot do in linear time (backreferences, lookarounds, atomic groups) is refused by name.
// No LibTorch here: the recipe reader (and its fuzz target) use it too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace re2 {
class RE2;
}

namespace gemma {

// The longest pattern accepted (PEFT configs in the wild stay under 200 bytes).
constexpr size_t kMaxTargetRegexBytes = 4096;
// RE2's memory budget for one compiled pattern and its DFA; a pattern that needs more (a{1000}
// nested in a{1000}) is refused when compiled, a DFA that outgrows it falls back to RE2's NFA.
constexpr int64_t kMaxTargetRegexMemory = int64_t{32} << 20;

class TargetRegex {
 public:
  // InputError "<where>: regular expression "<pattern>" ...: <RE2's reason>" for a pattern that is
  // too long, invalid, or needs what RE2 does not do.
  TargetRegex(const std::string& pattern, const std::string& where);
  ~TargetRegex();
  TargetRegex(TargetRegex&&) noexcept;
  TargetRegex& operator=(TargetRegex&&) noexcept;

  // PEFT's test: re.fullmatch(pattern, path) is not None (the whole path must match).
  bool full_match(const std::string& path) const;

 private:
  std::unique_ptr<re2::RE2> re_;
};

// Compiles `pattern` only to check it: the InputError TargetRegex's constructor throws, if any.
void check_target_regex(const std::string& pattern, const std::string& where);

}  // namespace gemma
