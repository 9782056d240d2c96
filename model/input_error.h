// InputError: the one exception type for bad input from people and their files (config.json,
// safetensors headers, CLI flags, ...). Its message names where (file, key or line), what was
// expected and what was found; the CLI prints it on one line and exits non-zero.
// TORCH_CHECK stays for internal invariants only (style.md §12).
#pragma once

#include <stdexcept>
#include <string>

namespace gemma {

class InputError : public std::runtime_error {
 public:
  explicit InputError(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace gemma
