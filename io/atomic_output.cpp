// Temporaries: open(O_CREAT|O_EXCL|O_NOFOLLOW) / mkdir at `.<name>.gemma-tmp-<pid>-<16 hex>` in
// the destination's folder (same file system, so the publishing rename is atomic). Publishing:
// rename() where replacing is allowed; renameat2(RENAME_NOREPLACE) otherwise, or link()+unlink()
// on file systems without it. Live temporaries sit in a fixed table the signal handler reads
// with async-signal-safe calls only (unlinkat, openat, getdents64, rmdir).
#include "io/atomic_output.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <mutex>
#include <random>
#include <set>
#include <system_error>

#include "io/file_identity.h"
#include "io/input_error.h"

namespace gemma {
namespace fs = std::filesystem;

namespace {

std::string errno_text(int err) { return std::strerror(err); }

fs::path parent_of(const fs::path& path) {
  return path.has_parent_path() ? path.parent_path() : fs::path(".");
}

// ---- the table of live temporaries, for the signal handler.
constexpr size_t kSlots = 64;
constexpr size_t kPathBytes = 4096;
enum SlotState : int { kFree = 0, kClaimed = 1, kFile = 2, kFolder = 3 };
struct TempSlot {
  std::atomic<int> state{kFree};
  std::array<char, kPathBytes> path{};
};
std::array<TempSlot, kSlots> g_slots;

// The slot index, or -1 when the table is full or the path too long (then only the stale-temp
// report of a later run can find it).
int remember_temporary(const fs::path& path, SlotState kind) {
  const std::string text = fs::absolute(path).string();
  if (text.size() >= kPathBytes) return -1;
  for (size_t i = 0; i < kSlots; ++i) {
    int expected = kFree;
    if (g_slots[i].state.compare_exchange_strong(expected, kClaimed)) {
      std::memcpy(g_slots[i].path.data(), text.c_str(), text.size() + 1);
      g_slots[i].state.store(kind);
      return static_cast<int>(i);
    }
  }
  return -1;
}

void forget_temporary(int slot) {
  if (slot >= 0) g_slots[static_cast<size_t>(slot)].state.store(kFree);
}

struct LinuxDirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

// Removes `name` in `dir_fd` and, if it is a folder, everything under it (depth-bounded); only
// async-signal-safe calls.
void remove_tree_at(int dir_fd, const char* name, int depth) {
  if (::unlinkat(dir_fd, name, 0) == 0 || depth > 16) return;
  const int fd = ::openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  alignas(8) char buffer[2048];
  bool removed_any = true;
  while (removed_any) {  // entries removed while listing may be skipped: list again
    removed_any = false;
    ::lseek(fd, 0, SEEK_SET);
    for (;;) {
      const long n = ::syscall(SYS_getdents64, fd, buffer, sizeof buffer);
      if (n <= 0) break;
      for (long offset = 0; offset < n;) {
        const auto* entry = reinterpret_cast<const LinuxDirent64*>(buffer + offset);
        offset += entry->d_reclen;
        const char* child = entry->d_name;
        if (std::strcmp(child, ".") == 0 || std::strcmp(child, "..") == 0) continue;
        remove_tree_at(fd, child, depth + 1);
        removed_any = true;
      }
    }
  }
  ::close(fd);
  ::unlinkat(dir_fd, name, AT_REMOVEDIR);
}

extern "C" void remove_temporaries_and_die(int sig) {
  for (TempSlot& slot : g_slots) {
    const int state = slot.state.load();
    if (state == kFile) ::unlink(slot.path.data());
    if (state == kFolder) remove_tree_at(AT_FDCWD, slot.path.data(), 0);
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// ---- names.
std::string random_suffix() {
  static std::mutex mutex;
  static std::mt19937_64 generator{std::random_device{}()};
  const std::lock_guard<std::mutex> lock(mutex);
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(generator()));
  return text;
}

fs::path temporary_name(const fs::path& destination) {
  std::string name = ".";
  name += destination.filename().string();
  name += kTemporaryMarker;
  name += std::to_string(::getpid());
  name += '-';
  name += random_suffix();
  return parent_of(destination) / name;
}

// Once per folder and process: names the temporaries of processes that are gone.
void report_stale_temporaries(const fs::path& folder) {
  static std::mutex mutex;
  static std::set<std::string> seen;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    if (!seen.insert(fs::absolute(folder).string()).second) return;
  }
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const size_t at = name.find(kTemporaryMarker);
    if (name.empty() || name[0] != '.' || at == std::string::npos) continue;
    const std::string rest = name.substr(at + std::strlen(kTemporaryMarker));
    char* end_of_pid = nullptr;
    const long pid = std::strtol(rest.c_str(), &end_of_pid, 10);
    if (pid <= 0 || end_of_pid == rest.c_str() || *end_of_pid != '-') continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // still running
    std::cerr << "warning: " << it->path().string() << ": left by an interrupted run (process "
              << pid << " is gone); it is safe to delete\n";
  }
}

// Why `path` may not be an output, or "" when it may. `existing` only matters for a regular file.
std::string output_problem(const fs::path& path, bool must_not_exist) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return "";
    return "cannot inspect: " + errno_text(errno);
  }
  if (S_ISLNK(st.st_mode)) return "is a symbolic link; refusing to write through or replace it";
  if (S_ISDIR(st.st_mode)) return must_not_exist ? "already exists" : "is a folder, not a file";
  if (!S_ISREG(st.st_mode))
    return "is a device, FIFO or socket, not a regular file; refusing to replace it";
  if (is_noted_input(path)) return "is also an input of this command; choose another output";
  if (must_not_exist) return "already exists";
  return "";
}

void check_parent(const fs::path& path) {
  std::error_code ec;
  const fs::path parent = parent_of(path);
  if (!fs::is_directory(parent, ec))
    throw InputError(path.string() + ": folder " + parent.string() + " does not exist");
}

// renameat2(RENAME_NOREPLACE), falling back to link + unlink for files where the file system
// lacks it. Returns 0 or an errno value.
int publish_without_replacing(const fs::path& from, const fs::path& to, bool is_folder) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return 0;
  const int err = errno;
  if (err != EINVAL && err != ENOSYS) return err;
  if (is_folder) {  // rename(2) replaces only an empty folder; refuse if anything is there
    struct stat st {};
    if (::lstat(to.c_str(), &st) == 0) return EEXIST;
    return ::rename(from.c_str(), to.c_str()) == 0 ? 0 : errno;
  }
  if (::link(from.c_str(), to.c_str()) != 0) return errno;
  ::unlink(from.c_str());
  return 0;
}

void fsync_folder(const fs::path& folder) {
  const int fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);  // durability of the rename; a failure here loses nothing already published
  ::close(fd);
}

}  // namespace

void check_output_file(const fs::path& path, ExistingOutput existing) {
  check_parent(path);
  const std::string problem = output_problem(path, existing == ExistingOutput::kRefuse);
  if (!problem.empty()) throw InputError(path.string() + ": " + problem);
}

void check_output_folder(const fs::path& dir) {
  check_parent(dir);
  const std::string problem = output_problem(dir, true);
  if (!problem.empty())
    throw InputError(dir.string() + ": output folder " + problem + "; choose a new path");
}

AtomicFileWriter::AtomicFileWriter(fs::path path, ExistingOutput existing)
    : path_(std::move(path)), existing_(existing) {
  check_output_file(path_, existing_);
  report_stale_temporaries(parent_of(path_));
  for (int attempt = 0; attempt < 8 && fd_ < 0; ++attempt) {
    tmp_ = temporary_name(path_);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno != EEXIST)
      throw InputError(tmp_.string() + ": cannot create: " + errno_text(errno));
  }
  if (fd_ < 0) throw InputError(tmp_.string() + ": cannot create a unique temporary file");
  slot_ = remember_temporary(tmp_, kFile);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
  forget_temporary(slot_);
}

void AtomicFileWriter::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw InputError(path_.string() + ": write failed: " + errno_text(errno));
    }
    if (n == 0) throw InputError(path_.string() + ": write failed: no progress");
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFileWriter::commit() {
  if (::fsync(fd_) != 0) throw InputError(path_.string() + ": fsync failed: " + errno_text(errno));
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    throw InputError(path_.string() + ": write failed: " + errno_text(err));
  }
  // Checked again: the path may have changed while the work ran.
  const std::string problem = output_problem(path_, existing_ == ExistingOutput::kRefuse);
  int err = 0;
  if (problem.empty()) {
    if (existing_ == ExistingOutput::kReplace) {
      err = ::rename(tmp_.c_str(), path_.c_str()) == 0 ? 0 : errno;
    } else {
      err = publish_without_replacing(tmp_, path_, false);
    }
  }
  if (!problem.empty() || err != 0) {
    ::unlink(tmp_.c_str());
    forget_temporary(slot_);
    slot_ = -1;
    if (!problem.empty()) throw InputError(path_.string() + ": " + problem);
    throw InputError(path_.string() + (err == EEXIST ? ": already exists (written meanwhile)"
                                                     : ": cannot publish: " + errno_text(err)));
  }
  forget_temporary(slot_);
  slot_ = -1;
  fsync_folder(parent_of(path_));
}

void write_file_atomically(const fs::path& path, const std::string& bytes,
                           ExistingOutput existing) {
  AtomicFileWriter out(path, existing);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

void write_folder_atomically(const fs::path& out_dir,
                             const std::function<void(const fs::path&)>& fill) {
  check_output_folder(out_dir);
  report_stale_temporaries(parent_of(out_dir));
  fs::path tmp;
  bool made = false;
  for (int attempt = 0; attempt < 8 && !made; ++attempt) {
    tmp = temporary_name(out_dir);
    made = ::mkdir(tmp.c_str(), 0755) == 0;
    if (!made && errno != EEXIST)
      throw InputError(tmp.string() + ": cannot create: " + errno_text(errno));
  }
  if (!made) throw InputError(tmp.string() + ": cannot create a unique temporary folder");
  const int slot = remember_temporary(tmp, kFolder);
  std::error_code ec;
  try {
    fill(tmp);
    fsync_folder(tmp);
    const int err = publish_without_replacing(tmp, out_dir, true);
    if (err != 0) {
      throw InputError(out_dir.string() + (err == EEXIST || err == ENOTEMPTY
                                               ? ": output folder already exists (written "
                                                 "meanwhile); choose a new path"
                                               : ": cannot publish: " + errno_text(err)));
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    forget_temporary(slot);
    throw;
  }
  forget_temporary(slot);
  fsync_folder(parent_of(out_dir));
}

void remove_temporaries_on_signals() {
  std::signal(SIGINT, remove_temporaries_and_die);
  std::signal(SIGTERM, remove_temporaries_and_die);
}

}  // namespace gemma
