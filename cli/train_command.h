// `gemma-train train --recipe R [--set key=value ...]` (also spelt `gemma-train --recipe R`).
#pragma once

#include "cli/cli_flags.h"

namespace gemma {

int run_train_command(const CliFlags& flags);

}  // namespace gemma
