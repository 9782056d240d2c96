// `gemma-train launch --nproc N [--hosts ...] -- <train arguments>`: one training on N processes,
// started by mpirun with what gemma-train's ranks need (every rank this binary, as root
// --allow-run-as-root, no core binding so each rank's threads spread over its share of the cores,
// the environment a remote rank needs).
#pragma once

#include <string>
#include <vector>

#include "cli/cli_flags.h"

namespace gemma {

// The mpirun command line the launch runs (for --dry-run and the tests).
std::vector<std::string> launch_command_line(const CliFlags& flags, const std::string& binary);

int run_launch_command(const CliFlags& flags);

}  // namespace gemma
