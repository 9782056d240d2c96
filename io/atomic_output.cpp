#include "io/atomic_output.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "io/input_error.h"

namespace gemma {
namespace fs = std::filesystem;

namespace {

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const char* data, size_t size, const fs::path& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw InputError(path.string() + ": write failed: " + errno_text());
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(fs::path path)
    : path_(std::move(path)), tmp_(path_.string() + ".tmp-" + std::to_string(::getpid())) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw InputError(tmp_.string() + ": cannot create: " + errno_text());
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFileWriter::write(const void* data, size_t size) {
  write_all(fd_, static_cast<const char*>(data), size, tmp_);
}

void AtomicFileWriter::commit() {
  if (::fsync(fd_) != 0) throw InputError(tmp_.string() + ": fsync failed: " + errno_text());
  ::close(fd_);
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp_.c_str());
    throw InputError(path_.string() + ": cannot rename into place: " + why);
  }
}

void write_file_atomically(const fs::path& path, const std::string& bytes) {
  AtomicFileWriter out(path);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

void write_folder_atomically(const fs::path& out_dir,
                             const std::function<void(const fs::path&)>& fill) {
  std::error_code ec;
  if (fs::exists(out_dir, ec)) {
    throw InputError(out_dir.string() + ": output folder already exists; choose a new path");
  }
  const fs::path parent = out_dir.has_parent_path() ? out_dir.parent_path() : fs::path(".");
  if (!fs::is_directory(parent, ec)) {
    throw InputError(out_dir.string() + ": parent folder " + parent.string() + " does not exist");
  }
  const fs::path tmp =
      parent / ("." + out_dir.filename().string() + ".tmp-" + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);
  fs::create_directory(tmp);
  try {
    fill(tmp);
    fs::rename(tmp, out_dir);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace gemma
