// The fuzz targets whose parsers read files (a recipe path, a checkpoint or adapter folder) write
// each input into a folder of their own: made with mkdtemp once per process, removed at exit.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace gemma_fuzz {

inline void remove_scratch_folder();

// <tmp>/gemma_fuzz.XXXXXX, made on first use (never destroyed, so the exit handler can still
// name it); a process that cannot make it stops (a broken setup, not a finding). <tmp> is $TMPDIR
// when set, else /dev/shm when writable (a file written per input: several times faster in
// memory than on a disk), else /tmp.
inline const std::filesystem::path& scratch_folder() {
  static const std::filesystem::path* const folder = [] {
    std::filesystem::path tmp = "/dev/shm";
    if (std::getenv("TMPDIR") != nullptr || ::access(tmp.c_str(), W_OK | X_OK) != 0)
      tmp = std::filesystem::temp_directory_path();
    std::string name = (tmp / "gemma_fuzz.XXXXXX").string();
    if (::mkdtemp(name.data()) == nullptr) std::abort();
    return new std::filesystem::path(name);
  }();
  static const int removed_at_exit = std::atexit(remove_scratch_folder);
  (void)removed_at_exit;
  return *folder;
}

inline void remove_scratch_folder() {
  std::error_code ec;
  std::filesystem::remove_all(scratch_folder(), ec);
}

// Writes `bytes` to scratch_folder()/name (replacing it) and returns the path.
inline std::filesystem::path write_scratch_file(const std::string& name, std::string_view bytes) {
  const std::filesystem::path path = scratch_folder() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) std::abort();
  return path;
}

}  // namespace gemma_fuzz
