// CliFlags: the `--name value` / `--switch` flags of one gemma-train subcommand. Other tools script
// these commands, so flags are a closed set: an unknown flag, a missing value or a malformed
// number is an InputError naming the flag and what was expected.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace gemma {

class CliFlags {
 public:
  CliFlags(std::string command, const std::vector<std::string>& args,
           const std::set<std::string>& value_flags,
           const std::set<std::string>& switch_flags = {});

  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string required(const std::string& name) const;
  std::optional<std::string> optional(const std::string& name) const;
  std::string value_or(const std::string& name, const std::string& fallback) const;
  int64_t integer_or(const std::string& name, int64_t fallback) const;
  double number_or(const std::string& name, double fallback) const;
  // One of `choices`; the error lists them.
  std::string choice_or(const std::string& name, const std::string& fallback,
                        const std::vector<std::string>& choices) const;

 private:
  std::string command_;
  std::map<std::string, std::string> values_;
};

// "1,2,3" -> {1, 2, 3}; InputError naming `flag` on anything else.
std::vector<int64_t> parse_id_list(const std::string& text, const std::string& flag);

}  // namespace gemma
