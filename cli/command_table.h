// The command line is one table (style.md §16): a row per command with its name, a one-line
// summary, its flags and the function that runs it. `gemma-train --help`, `<command> --help` and
// the README's command list all come from here (a test keeps the README honest).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "cli/cli_flags.h"

namespace gemma {

struct CommandSpec {
  std::string name;
  std::string summary;
  // What the flags cannot say alone, e.g. "(--prompt | --messages | --input)"; shown in usage.
  std::string usage_note;
  std::vector<FlagSpec> flags;
  std::function<int(const CliFlags&)> run;
  // The flag a bare first argument fills (`gemma-train plot metrics.jsonl` = `--metrics
  // metrics.jsonl`); empty: every argument is a flag.
  std::string positional;
  // Takes a command line after a bare `--` (CliFlags::trailing()).
  bool takes_command_line = false;
};

// Every command, in the order help lists them.
const std::vector<CommandSpec>& command_table();

// Flags every command takes (--threads).
const std::vector<FlagSpec>& global_flags();

// The help of the binary (every command with its usage line and summary) and of one command.
std::string binary_help();
std::string command_help(const CommandSpec& command);
// "gemma-train init --config <file|name> --out DIR [--seed N] ...": the README's form.
std::string usage_line(const CommandSpec& command);

// Runs `gemma-train args...`: finds the row, parses its flags, sets the thread count and calls it.
// Errors become one line on stderr and the exit code (2: bad input, 3: internal error).
int run_cli(std::vector<std::string> args);

}  // namespace gemma
