// Outputs are written atomically and never through something they must not replace (design.md,
// "Errors are for people"). A file or a folder is built under an unpredictable temporary name
// beside its destination (created with O_EXCL|O_NOFOLLOW, so a planted symlink cannot redirect
// it), fsynced, and published with one rename only when complete: a killed run never leaves a
// half-written checkpoint at the final path. An output that is a symlink, a device, a FIFO or a
// socket, or the same file as an input of the command (file_identity.h), is refused. Folders are
// published with RENAME_NOREPLACE, so of two runs writing the same folder exactly one succeeds.
// Temporaries are named `.<name>.gemma-tmp-<pid>-<random>`; a later write into the same folder
// names the ones whose process is gone, and SIGINT/SIGTERM remove the live ones.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

namespace gemma {

// What to do when the destination file already exists (as a regular file).
enum class ExistingOutput {
  kReplace,  // atomically replace it (the command documents that it overwrites)
  kRefuse,   // an InputError, also when another writer publishes first
};

// Refuses, before any work, an output file path that is a symlink, not a regular file (folder,
// device, FIFO, socket), the same file as a noted input, or (kRefuse) existing at all; and one
// whose folder does not exist. The InputError names the path and the reason.
void check_output_file(const std::filesystem::path& path,
                       ExistingOutput existing = ExistingOutput::kReplace);
// The same for an output folder, which must not exist yet (not even as a dangling symlink).
void check_output_folder(const std::filesystem::path& dir);

// A file written under a temporary name and published at `path` by commit(); destroyed without
// commit(), it removes the temporary. Short writes and write errors are InputErrors.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path path,
                            ExistingOutput existing = ExistingOutput::kReplace);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t size);
  void commit();  // fsync, checks again, rename, fsync of the folder

 private:
  std::filesystem::path path_, tmp_;
  ExistingOutput existing_;
  int fd_ = -1;
  int slot_ = -1;  // in the signal handler's table of live temporaries
};

// Writes `bytes` to `path` atomically.
void write_file_atomically(const std::filesystem::path& path, const std::string& bytes,
                           ExistingOutput existing = ExistingOutput::kReplace);

// Calls `fill(tmp_dir)` to populate a fresh temporary folder beside `out_dir`, then publishes it
// as `out_dir`, which must not exist (check_output_folder), neither before nor at the rename. On
// any exception the temporary folder is removed and nothing is left behind.
void write_folder_atomically(const std::filesystem::path& out_dir,
                             const std::function<void(const std::filesystem::path&)>& fill);

// Installs SIGINT/SIGTERM handlers that remove the live temporaries and then die of the signal
// as before (exit status 128 + signal). The trainer replaces them with its own, which finish the
// current write first.
void remove_temporaries_on_signals();

// The temporary-name marker, for tests and for `--help` texts.
constexpr const char* kTemporaryMarker = ".gemma-tmp-";

}  // namespace gemma
