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

#include "io/file_identity.h"

namespace gemma {

class InputError : public std::runtime_error {
 public:
  explicit InputError(const std::string& message) : std::runtime_error(message) {}
};

// The largest text input read whole (a Gemma tokenizer.json is ~30 MiB).
constexpr uintmax_t kMaxTextFileBytes = uintmax_t{512} << 20;

// The whole of a (small) input file: a config, an index, a tokenizer, a messages file. Only a
// regular file (after symlinks) of at most `max_bytes` is read; it is noted as an input of the
// command (file_identity.h). An InputError names the file otherwise.
inline std::string read_text_file(const std::filesystem::path& path,
                                  uintmax_t max_bytes = kMaxTextFileBytes) {
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) throw InputError(path.string() + ": cannot open");
  if (!std::filesystem::is_regular_file(status))
    throw InputError(path.string() + ": not a regular file");
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (!ec && size > max_bytes)
    throw InputError(path.string() + ": " + std::to_string(size) + " bytes, over the limit of " +
                     std::to_string(max_bytes) + " for this kind of file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open");
  note_input_file(path);
  std::string text;
  char buffer[1 << 16];
  while (in) {
    in.read(buffer, sizeof buffer);
    const std::streamsize got = in.gcount();
    if (got <= 0) break;
    text.append(buffer, static_cast<size_t>(got));
    if (text.size() > max_bytes)  // grew while being read
      throw InputError(path.string() + ": over the limit of " + std::to_string(max_bytes) +
                       " bytes for this kind of file");
  }
  return text;
}

// A shape as errors print it: "[3, 4]".
inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace gemma
