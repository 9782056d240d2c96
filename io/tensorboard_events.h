// TensorBoardWriter: scalars in a TensorBoard event file, byte for byte what
// torch.utils.tensorboard.SummaryWriter writes, so `tensorboard --logdir` shows a run. The file is
// a sequence of TFRecords (a length, its masked CRC32C, the bytes, their masked CRC32C), each an
// `Event` protobuf (tensorboard/compat/proto/event.proto) encoded here by hand.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace gemma {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), continuing from `crc` (0 to start).
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
// TFRecord's masked CRC (tensorflow/core/lib/hash/crc32c.h `Mask`): rotated right by 15 bits
// plus 0xa282ead8, so a CRC stored inside CRC'd data does not look like one.
uint32_t masked_crc32c(const void* data, size_t size);

// One TFRecord: uint64 length (little-endian), masked CRC32C of those 8 bytes, `data`, masked
// CRC32C of `data`.
std::string tfrecord_frame(const std::string& data);

// The first Event of every file: {wall_time, file_version: "brain.Event:2"}.
std::string encode_file_version_event(double wall_time);
// Event{wall_time, step, summary: Summary{value: [Value{tag, simple_value}]}}. Like protobuf's
// proto3 serializer, a step of 0 is left out.
std::string encode_scalar_event(const std::string& tag, float value, int64_t step,
                                double wall_time);

// tensorboard's event_file_writer.py name: events.out.tfevents.<%010d unix seconds>.<hostname>.
// <pid>.<counter>.
std::string event_file_name(double wall_time, const std::string& hostname, int64_t pid,
                            int64_t counter);

// Seconds since the Unix epoch, with sub-second precision (Python's time.time()).
double unix_seconds_now();

class TensorBoardWriter {
 public:
  // Creates `logdir` (and parents) and a new event file in it, opened exclusively: an existing
  // file is never replaced. Writes the file_version event at once. InputError when either fails.
  explicit TensorBoardWriter(const std::filesystem::path& logdir);
  ~TensorBoardWriter();  // flushes; errors there are swallowed (call flush() to see them)
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Buffers one scalar; stored as a float32 simple_value, as SummaryWriter.add_scalar does.
  void add_scalar(const std::string& tag, double value, int64_t step,
                  double wall_time = unix_seconds_now());
  // Hands the buffered records to the kernel, so a killed run keeps every event logged so far.
  void flush();

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
  std::string pending_;
};

}  // namespace gemma
