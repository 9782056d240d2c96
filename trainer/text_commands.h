// The text-side subcommands of gemma-train: `generate`, `chat` and `tokenize`. Other tools script
// them, so names, flags and output formats are stable.
#pragma once

#include <string>
#include <vector>

namespace gemma {

int run_generate_command(const std::vector<std::string>& args);
int run_chat_command(const std::vector<std::string>& args);
int run_tokenize_command(const std::vector<std::string>& args);

}  // namespace gemma
