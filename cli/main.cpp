// gemma-train: one binary for Gemma 4 fine-tuning. The commands are rows of cli/command_table.cpp.
#include <string>
#include <vector>

#include "cli/command_table.h"

int main(int argc, char** argv) {
  return gemma::run_cli(std::vector<std::string>(argv + 1, argv + argc));
}
