// The model-side subcommands of gemma-train: `init`, `logits` and `info`. Other tools script
// them, so their names, flags and output formats are stable.
#pragma once

#include <string>
#include <vector>

namespace gemma {

int run_init_command(const std::vector<std::string>& args);
int run_logits_command(const std::vector<std::string>& args);
int run_info_command(const std::vector<std::string>& args);
int run_quantize_command(const std::vector<std::string>& args);
int run_adapter_command(const std::vector<std::string>& args);
int run_merge_command(const std::vector<std::string>& args);

}  // namespace gemma
