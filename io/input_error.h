// InputError: the one exception type for bad input from people and their files (config.json,
// safetensors headers, CLI flags, ...). Its message names where (file, key or line), what was
// expected and what was found; the CLI prints it on one line and exits non-zero.
// TORCH_CHECK stays for internal invariants only (style.md §12).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace gemma {

class InputError : public std::runtime_error {
 public:
  explicit InputError(const std::string& message) : std::runtime_error(message) {}
};

// The whole of a (small) input file: a config, an index, a tokenizer, a messages file. An
// InputError names the file when it cannot be read.
inline std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A shape as errors print it: "[3, 4]".
inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace gemma
