#include "io/tensorboard_events.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "io/input_error.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::ScratchDir;

std::string hex(const std::string& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (const char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The records of a TFRecord file, checking each frame's CRCs on the way.
std::vector<std::string> read_records(const std::string& file) {
  std::vector<std::string> records;
  size_t at = 0;
  while (at < file.size()) {
    EXPECT_GE(file.size() - at, 12U);
    uint64_t length = 0;
    uint32_t length_crc = 0, data_crc = 0;
    std::memcpy(&length, file.data() + at, 8);
    std::memcpy(&length_crc, file.data() + at + 8, 4);
    EXPECT_EQ(length_crc, masked_crc32c(file.data() + at, 8));
    const std::string data = file.substr(at + 12, length);
    std::memcpy(&data_crc, file.data() + at + 12 + length, 4);
    EXPECT_EQ(data_crc, masked_crc32c(data.data(), data.size()));
    records.push_back(data);
    at += 16 + length;
  }
  return records;
}

// RFC 3720 (iSCSI) appendix B.4 and the common "123456789" check value.
TEST(TensorBoardCrc32c, MatchesKnownVectors) {
  const std::string digits = "123456789";
  EXPECT_EQ(crc32c(digits.data(), digits.size()), 0xE3069283U);
  const std::string zeros(32, '\0'), ones(32, '\xff');
  std::string ascending, descending;
  for (int i = 0; i < 32; ++i) {
    ascending += static_cast<char>(i);
    descending += static_cast<char>(31 - i);
  }
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAU);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43U);
  EXPECT_EQ(crc32c(ascending.data(), ascending.size()), 0x46DD794EU);
  EXPECT_EQ(crc32c(descending.data(), descending.size()), 0x113FDB5CU);
  EXPECT_EQ(crc32c("", 0), 0U);
}

TEST(TensorBoardCrc32c, ContinuesAcrossPieces) {
  const std::string digits = "123456789";
  EXPECT_EQ(crc32c(digits.data() + 4, 5, crc32c(digits.data(), 4)), 0xE3069283U);
}

TEST(TensorBoardCrc32c, MasksLikeTensorFlow) {
  // tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c(b"123456789")
  EXPECT_EQ(masked_crc32c("123456789", 9), 0xC78AB0E5U);
}

TEST(TensorBoardRecord, FramesLengthDataAndMaskedCrcs) {
  // tensorboard's RecordWriter(BytesIO()).write(b"abc")
  EXPECT_EQ(hex(tfrecord_frame("abc")), "0300000000000000b099490e6162636e57f121");
  const std::string empty = tfrecord_frame("");
  EXPECT_EQ(empty.size(), 16U);
  EXPECT_EQ(read_records(empty), std::vector<std::string>{""});
}

TEST(TensorBoardEvent, EncodesAScalarByHand) {
  // Event{wall_time: 1.0, step: 10, summary{value{tag: "loss", simple_value: 2.5}}}
  const std::string expected = std::string() +
                               "09000000000000f03f" +  // field 1, fixed64: wall_time = 1.0
                               "100a" +                // field 2, varint: step = 10
                               "2a0d" +                // field 5, 13 bytes: summary
                               "0a0b" +                //   Summary field 1, 11 bytes: value
                               "0a046c6f7373" +        //     Value field 1: tag = "loss"
                               "1500002040";           //     Value field 2, fixed32: 2.5f
  EXPECT_EQ(hex(encode_scalar_event("loss", 2.5F, 10, 1.0)), expected);
}

TEST(TensorBoardEvent, LeavesOutStepZeroAndWritesNegativeStepsInTenBytes) {
  const std::string zero = hex(encode_scalar_event("a", 1.0F, 0, 1.0));
  EXPECT_EQ(zero.substr(0, 18), "09000000000000f03f");
  EXPECT_EQ(zero.substr(18, 2), "2a");  // straight to the summary, as proto3 serializes
  const std::string negative = hex(encode_scalar_event("a", 1.0F, -1, 1.0));
  EXPECT_EQ(negative.substr(18, 22), "10ffffffffffffffffff01");
}

TEST(TensorBoardEvent, FirstEventNamesTheFileVersion) {
  EXPECT_EQ(hex(encode_file_version_event(1.0)), "09000000000000f03f1a0d" + hex("brain.Event:2"));
}

TEST(TensorBoardWriter, NamesFilesLikeSummaryWriter) {
  EXPECT_EQ(event_file_name(1712345678.9, "host", 4242, 0),
            "events.out.tfevents.1712345678.host.4242.0");
  EXPECT_EQ(event_file_name(5.0, "h", 1, 3), "events.out.tfevents.0000000005.h.1.3");
}

TEST(TensorBoardWriter, WritesFramedEventsAndFlushesEachStep) {
  ScratchDir dir;
  const auto logdir = dir / "runs" / "a";
  TensorBoardWriter writer(logdir);  // creates the folders
  EXPECT_EQ(writer.path().parent_path(), logdir);
  EXPECT_EQ(writer.path().filename().string().rfind("events.out.tfevents.", 0), 0U);
  writer.add_scalar("train/loss", 2.5, 10, 1.0);
  writer.add_scalar("train/learning_rate", 1e-4, 10, 1.0);
  writer.flush();
  // Flushed, so another reader sees the records while the writer is still open.
  const std::vector<std::string> records = read_records(read_bytes(writer.path()));
  ASSERT_EQ(records.size(), 3U);
  EXPECT_NE(records[0].find("brain.Event:2"), std::string::npos);
  EXPECT_EQ(records[1], encode_scalar_event("train/loss", 2.5F, 10, 1.0));
  EXPECT_EQ(records[2], encode_scalar_event("train/learning_rate", 1e-4F, 10, 1.0));
}

TEST(TensorBoardWriter, NeverReplacesAnExistingFile) {
  ScratchDir dir;
  std::filesystem::path first, second;
  {
    TensorBoardWriter a(dir.path());
    TensorBoardWriter b(dir.path());  // same second, same pid: the counter tells them apart
    first = a.path();
    second = b.path();
    a.add_scalar("x", 1, 1, 1.0);
  }
  EXPECT_NE(first, second);
  EXPECT_EQ(read_records(read_bytes(first)).size(), 2U);
  EXPECT_EQ(read_records(read_bytes(second)).size(), 1U);
}

TEST(TensorBoardWriter, UnwritableLogdirIsAnInputError) {
  ScratchDir dir;
  std::ofstream(dir / "file") << "x";
  EXPECT_THROW(TensorBoardWriter(dir / "file" / "logs"), InputError);
}

}  // namespace
}  // namespace gemma
