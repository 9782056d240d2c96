#include "io/tensorboard_events.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <system_error>

#include "io/input_error.h"

namespace gemma {
namespace fs = std::filesystem;

namespace {

constexpr uint32_t kCrc32cPolynomial = 0x82F63B78;  // Castagnoli, bit-reversed
constexpr uint32_t kCrcMaskDelta = 0xa282ead8;      // tensorflow/core/lib/hash/crc32c.h

std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1U) ? kCrc32cPolynomial : 0U);
    table[i] = crc;
  }
  return table;
}

// Protobuf wire format: a field's key is (number << 3 | wire type).
enum WireType : uint8_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7F) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void put_key(std::string& out, uint32_t field, WireType type) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | type);
}

template <typename T>
void put_little_endian(std::string& out, T value) {
  unsigned char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));  // the hosts we build for are little-endian
  out.append(reinterpret_cast<const char*>(bytes), sizeof(T));
}

void put_bytes_field(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

// Event (event.proto): wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
// summary = 5 (Summary). Summary (summary.proto): value = 1 (repeated Value). Summary.Value:
// tag = 1 (string), simple_value = 2 (float). Serialized: these numbers never change.
constexpr uint32_t kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5;
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1, kValueSimpleValue = 2;
constexpr char kFileVersion[] = "brain.Event:2";

std::string event_head(double wall_time, int64_t step) {
  std::string out;
  put_key(out, kEventWallTime, kFixed64);
  put_little_endian(out, wall_time);
  if (step != 0) {  // proto3: a default value is not serialized
    put_key(out, kEventStep, kVarint);
    put_varint(out, static_cast<uint64_t>(step));  // negative: ten bytes, two's complement
  }
  return out;
}

std::string errno_text() { return std::strerror(errno); }

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "localhost";
  return name;
}

// Per process, like event_file_writer.py's _global_uid: two writers in one second get two files.
std::atomic<int64_t> g_event_file_counter{0};

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc32c_table();
  const auto* bytes = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ bytes[i]) & 0xFFU] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + kCrcMaskDelta;
}

std::string tfrecord_frame(const std::string& data) {
  std::string out;
  put_little_endian(out, static_cast<uint64_t>(data.size()));
  put_little_endian(out, masked_crc32c(out.data(), out.size()));
  out += data;
  put_little_endian(out, masked_crc32c(data.data(), data.size()));
  return out;
}

std::string encode_file_version_event(double wall_time) {
  std::string out = event_head(wall_time, 0);
  put_bytes_field(out, kEventFileVersion, kFileVersion);
  return out;
}

std::string encode_scalar_event(const std::string& tag, float value, int64_t step,
                                double wall_time) {
  std::string summary_value;
  put_bytes_field(summary_value, kValueTag, tag);
  put_key(summary_value, kValueSimpleValue, kFixed32);
  put_little_endian(summary_value, value);
  std::string summary;
  put_bytes_field(summary, kSummaryValue, summary_value);
  std::string out = event_head(wall_time, step);
  put_bytes_field(out, kEventSummary, summary);
  return out;
}

std::string event_file_name(double wall_time, const std::string& hostname, int64_t pid,
                            int64_t counter) {
  char seconds[32];
  std::snprintf(seconds, sizeof(seconds), "%010lld",
                static_cast<long long>(std::floor(wall_time)));  // NOLINT(google-runtime-int)
  return std::string("events.out.tfevents.") + seconds + "." + hostname + "." +
         std::to_string(pid) + "." + std::to_string(counter);
}

double unix_seconds_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

TensorBoardWriter::TensorBoardWriter(const fs::path& logdir) {
  std::error_code ec;
  fs::create_directories(logdir, ec);
  if (ec || !fs::is_directory(logdir)) {
    throw InputError(logdir.string() + ": cannot create the TensorBoard log folder" +
                     (ec ? ": " + ec.message() : std::string()));
  }
  const double now = unix_seconds_now();
  const std::string host = host_name();
  // O_EXCL: a name taken already (another process with our pid, a copied folder) is skipped,
  // never truncated.
  for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
    path_ = logdir / event_file_name(now, host, ::getpid(), g_event_file_counter++);
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno != EEXIST) {
      throw InputError(path_.string() + ": cannot create: " + errno_text());
    }
  }
  if (fd_ < 0) throw InputError(logdir.string() + ": no free event file name");
  pending_ = tfrecord_frame(encode_file_version_event(now));
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  try {
    flush();
  } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
  }
  if (fd_ >= 0) ::close(fd_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step,
                                   double wall_time) {
  pending_ += tfrecord_frame(encode_scalar_event(tag, static_cast<float>(value), step, wall_time));
}

void TensorBoardWriter::flush() {
  size_t done = 0;
  while (done < pending_.size()) {
    const ssize_t n = ::write(fd_, pending_.data() + done, pending_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      pending_.erase(0, done);
      throw InputError(path_.string() + ": write failed: " + errno_text());
    }
    done += static_cast<size_t>(n);
  }
  pending_.clear();
}

}  // namespace gemma
