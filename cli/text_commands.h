// The text-side subcommands of gemma-train: `generate`, `chat` and `tokenize`. Other tools script
// them, so names, flags and output formats are stable.
#pragma once

#include "cli/cli_flags.h"

namespace gemma {

int run_generate_command(const CliFlags& flags);
int run_chat_command(const CliFlags& flags);
int run_tokenize_command(const CliFlags& flags);

}  // namespace gemma
