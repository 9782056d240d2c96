// `gemma-train validate-data`: a training dataset checked row by row, as the trainer reads it.
#pragma once

#include "cli/cli_flags.h"

namespace gemma {

int run_validate_data_command(const CliFlags& flags);

}  // namespace gemma
