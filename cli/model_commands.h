// The model-side subcommands of gemma-train: `init`, `logits` and `info`. Other tools script
// them, so their names, flags and output formats are stable.
#pragma once

#include "cli/cli_flags.h"

namespace gemma {

int run_init_command(const CliFlags& flags);
int run_logits_command(const CliFlags& flags);
int run_info_command(const CliFlags& flags);
int run_quantize_command(const CliFlags& flags);
int run_adapter_command(const CliFlags& flags);
int run_merge_command(const CliFlags& flags);

}  // namespace gemma
