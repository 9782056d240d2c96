// gemma-train: one binary for Gemma 4 fine-tuning. The commands are rows of cli/command_table.cpp.
#include <string>
#include <vector>

#include "cli/command_table.h"
#include "kernels/host_allocator.h"

int main(int argc, char** argv) {
  gemma::keep_large_host_allocations();
  return gemma::run_cli(std::vector<std::string>(argv + 1, argv + argc));
}
