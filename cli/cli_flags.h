// CliFlags: the parsed `--name value` / `--switch` flags of one gemma-train command, checked
// against that command's row of the command table (cli/command_table.h). Other tools script these
// commands, so flags are a closed set: an unknown flag, a missing value, a value outside a flag's
// choices or a malformed number is an InputError naming the flag and what was expected. Values
// are parsed here once, into types (numbers, sizes with units, dtypes, devices).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "io/atomic_output.h"

namespace gemma {

// One flag of a command. `value` names its value in help ("DIR", "N", "FILE|NAME"); lower-case
// "a|b|c" also makes a, b and c the only accepted values. An empty `value` makes the flag a switch.
struct FlagSpec {
  std::string name;      // without the leading --
  std::string value;     // empty: a switch
  std::string fallback;  // the default; empty: none
  std::string help;
  bool required = false;
  bool repeatable = false;  // may be given more than once (values(name) returns them in order)
  std::vector<std::string> choices() const;
};

class CliFlags {
 public:
  CliFlags(std::string command, const std::vector<std::string>& args,
           const std::vector<FlagSpec>& specs);

  const std::string& command() const { return command_; }
  // Given on the command line (defaults do not count).
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  // What a file output does when its path exists: replaced (atomically) only with --overwrite.
  ExistingOutput existing_output() const {
    return has("overwrite") ? ExistingOutput::kReplace : ExistingOutput::kRefuse;
  }
  std::string required(const std::string& name) const;
  std::optional<std::string> optional(const std::string& name) const;
  // The given value, else the table's default ("" when it has none).
  std::string value(const std::string& name) const;
  std::vector<std::string> values(const std::string& name) const;  // a repeatable flag
  int64_t integer(const std::string& name) const;
  double number(const std::string& name) const;
  // A size: "8GB", "500MB", "1.5GiB", or a plain number in `plain_unit_bytes` units.
  uint64_t bytes(const std::string& name, uint64_t plain_unit_bytes) const;
  torch::ScalarType dtype(const std::string& name) const;  // f32, bf16, f16
  torch::Device device(const std::string& name) const;     // cpu, cuda (must be available)
  // What followed a bare `--` (a command that runs another command line: launch).
  const std::vector<std::string>& trailing() const { return trailing_; }
  void set_trailing(std::vector<std::string> args) { trailing_ = std::move(args); }

 private:
  const FlagSpec& spec(const std::string& name) const;
  std::string command_;
  std::vector<FlagSpec> specs_;
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> trailing_;
};

// "1,2,3" -> {1, 2, 3}; InputError naming `flag` on anything else.
std::vector<int64_t> parse_id_list(const std::string& text, const std::string& flag);

// "8GB" -> 8e9, "1.5GiB" -> 1.5·2³⁰, "300" -> 300 · plain_unit_bytes; InputError naming `what`.
uint64_t parse_size(const std::string& text, uint64_t plain_unit_bytes, const std::string& what);

}  // namespace gemma
