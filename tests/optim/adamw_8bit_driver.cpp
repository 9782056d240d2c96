// Runs AdamW8bit (or AdamW with --optimizer adamw) for tests/reference/test_adamw8bit.py, which
// compares the result with bitsandbytes: reads `param.<name>` and `grad.<step>.<name>` from a
// safetensors file, takes --steps steps, writes `param.<name>` and `state.<state key>`.
// Usage: adamw_8bit_driver IN OUT [--steps N] [--lr X] [--beta1 X] [--beta2 X] [--eps X]
//        [--weight-decay X] [--min-8bit-size N] [--optimizer adamw8bit|adamw] [--paged 0|1]
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <string>

#include "io/safetensors.h"
#include "optim/adamw.h"
#include "optim/adamw_8bit.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: adamw_8bit_driver IN OUT [--flag value]...\n";
    return 2;
  }
  std::map<std::string, std::string> flags = {{"--steps", "1"},
                                              {"--lr", "1e-3"},
                                              {"--beta1", "0.9"},
                                              {"--beta2", "0.999"},
                                              {"--eps", "1e-8"},
                                              {"--weight-decay", "0.01"},
                                              {"--min-8bit-size", "4096"},
                                              {"--optimizer", "adamw8bit"},
                                              {"--paged", "0"}};
  for (int i = 3; i + 1 < argc; i += 2) {
    if (!flags.count(argv[i])) {
      std::cerr << "unknown flag " << argv[i] << "\n";
      return 2;
    }
    flags[argv[i]] = argv[i + 1];
  }
  try {
    gemma::SafetensorsFile in(argv[1]);
    gemma::NamedTensors params;
    for (const auto& key : in.names()) {
      if (key.rfind("param.", 0) == 0) params.emplace_back(key.substr(6), in.view(key).clone());
    }
    std::unique_ptr<gemma::Optimizer> opt;
    if (flags["--optimizer"] == "adamw") {
      gemma::AdamWOptions o;
      o.lr = std::stod(flags["--lr"]);
      o.beta1 = std::stod(flags["--beta1"]);
      o.beta2 = std::stod(flags["--beta2"]);
      o.eps = std::stod(flags["--eps"]);
      o.weight_decay = std::stod(flags["--weight-decay"]);
      o.paged = flags["--paged"] == "1";
      opt = std::make_unique<gemma::AdamW>(params, o);
    } else {
      gemma::AdamW8bitOptions o;
      o.lr = std::stod(flags["--lr"]);
      o.beta1 = std::stod(flags["--beta1"]);
      o.beta2 = std::stod(flags["--beta2"]);
      o.eps = std::stod(flags["--eps"]);
      o.weight_decay = std::stod(flags["--weight-decay"]);
      o.min_8bit_size = std::stoll(flags["--min-8bit-size"]);
      o.paged = flags["--paged"] == "1";
      opt = std::make_unique<gemma::AdamW8bit>(params, o);
    }
    const int steps = std::stoi(flags["--steps"]);
    for (int s = 0; s < steps; ++s) {
      for (auto& [name, p] : params) {
        const std::string key = "grad." + std::to_string(s) + "." + name;
        p.mutable_grad() = in.contains(key) ? in.view(key).clone() : torch::Tensor();
      }
      opt->step();
    }
    gemma::NamedTensors out;
    for (const auto& [name, p] : params) out.emplace_back("param." + name, p);
    for (const auto& [key, t] : opt->state_dict()) out.emplace_back("state." + key, t);
    gemma::write_safetensors(argv[2], out);
  } catch (const std::exception& e) {
    std::cerr << "adamw_8bit_driver: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
