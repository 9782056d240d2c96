// Outputs are written atomically (design.md, "Errors are for people"): a file or a folder is
// built under a temporary name beside its destination and renamed into place only when complete,
// so a killed run never leaves a half-written checkpoint behind.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

namespace gemma {

// A file written under `path.tmp-<pid>` and renamed to `path` by commit(); destroyed without
// commit(), it removes the temporary file.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t size);
  void commit();  // fsync + rename

 private:
  std::filesystem::path path_, tmp_;
  int fd_ = -1;
};

// Writes `bytes` to `path` atomically.
void write_file_atomically(const std::filesystem::path& path, const std::string& bytes);

// Calls `fill(tmp_dir)` to populate a fresh temporary folder beside `out_dir`, then renames it to
// `out_dir`. `out_dir` must not exist yet (an InputError says so); on any exception the temporary
// folder is removed and nothing is left behind.
void write_folder_atomically(const std::filesystem::path& out_dir,
                             const std::function<void(const std::filesystem::path&)>& fill);

}  // namespace gemma
