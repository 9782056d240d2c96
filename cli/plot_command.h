// `gemma-train plot`: a run's metrics.jsonl drawn as an SVG (loss, eval loss, learning rate).
#pragma once

#include "cli/cli_flags.h"

namespace gemma {

int run_plot_command(const CliFlags& flags);

}  // namespace gemma
