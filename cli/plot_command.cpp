#include "cli/plot_command.h"

#include <filesystem>
#include <iostream>

#include "trainer/metrics_plot.h"

namespace gemma {

int run_plot_command(const CliFlags& flags) {
  const std::filesystem::path metrics = flags.required("metrics");
  const std::filesystem::path out = flags.required("out");
  write_metrics_plot(metrics, out, metrics.string(), flags.existing_output());
  std::cout << "wrote " << out.string() << "\n";
  return 0;
}

}  // namespace gemma
