// `gemma-train plan --recipe R [--model DIR|NAME] [--device-memory SIZE] [--json]`: the memory
// plan of a recipe's run (trainer/memory_plan.h), from config.json alone, for a model folder or a
// released variant by name, so a user can plan before downloading weights.
#pragma once

#include "cli/cli_flags.h"

namespace gemma {

int run_plan_command(const CliFlags& flags);

}  // namespace gemma
