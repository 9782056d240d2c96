// Which files a command reads, by identity (device and inode), so that an output can refuse to be
// one of its own inputs: `generate --input p.jsonl --output p.jsonl` must not replace the prompts
// it is reading. Every reader in io/ and data/ notes what it opens, once the CLI has started
// noting (a library caller, such as a test that rewrites its own fixture, is not a command).
// Header-only, as the rest of io/ that data/ (no LibTorch) uses: a process-wide set behind a
// mutex.
#pragma once

#include <sys/stat.h>

#include <filesystem>
#include <mutex>
#include <set>
#include <utility>

namespace gemma {

namespace file_identity_detail {
struct NotedInputs {
  std::mutex mutex;
  bool enabled = false;
  std::set<std::pair<dev_t, ino_t>> files;
};
inline NotedInputs& noted_inputs() {
  static NotedInputs inputs;
  return inputs;
}
}  // namespace file_identity_detail

// From here on, note_input_file records (run_cli calls it before a command runs).
inline void start_noting_inputs() {
  auto& inputs = file_identity_detail::noted_inputs();
  const std::lock_guard<std::mutex> lock(inputs.mutex);
  inputs.enabled = true;
}

// Stops noting and forgets what was noted: the command is over (a later command in the same
// process, as the tests run them, must not see inode numbers the file system has since reused).
inline void stop_noting_inputs() {
  auto& inputs = file_identity_detail::noted_inputs();
  const std::lock_guard<std::mutex> lock(inputs.mutex);
  inputs.enabled = false;
  inputs.files.clear();
}

// Notes the inputs of one command for as long as it lives.
class NotingInputs {
 public:
  NotingInputs() { start_noting_inputs(); }
  ~NotingInputs() { stop_noting_inputs(); }
  NotingInputs(const NotingInputs&) = delete;
  NotingInputs& operator=(const NotingInputs&) = delete;
};

// Records `path` (followed through symlinks) as an input of this command. A path that cannot be
// stat'ed is ignored here: opening it reports the error.
inline void note_input_file(const std::filesystem::path& path) {
  auto& inputs = file_identity_detail::noted_inputs();
  {
    const std::lock_guard<std::mutex> lock(inputs.mutex);
    if (!inputs.enabled) return;
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return;
  const std::lock_guard<std::mutex> lock(inputs.mutex);
  inputs.files.emplace(st.st_dev, st.st_ino);
}

// Whether `path` exists and is the same file as a noted input.
inline bool is_noted_input(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return false;
  auto& inputs = file_identity_detail::noted_inputs();
  const std::lock_guard<std::mutex> lock(inputs.mutex);
  return inputs.files.count({st.st_dev, st.st_ino}) != 0;
}

}  // namespace gemma
