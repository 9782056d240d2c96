#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>

#include "io/input_error.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::ScratchDir;

// A safetensors file from a hand-written header and data section.
void write_raw(const std::filesystem::path& path, const std::string& header,
               const std::string& data, uint64_t header_len_override = 0) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header_len_override ? header_len_override : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << data;
}

// Expects opening `path` to throw an InputError whose message contains `needle`.
void expect_rejected(const std::filesystem::path& path, const std::string& needle) {
  try {
    SafetensorsFile file(path);
    FAIL() << "accepted a bad file; expected an error mentioning: " << needle;
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_NE(msg.find(path.string()), std::string::npos)
        << "error does not name the file: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "error is not one line: " << msg;
  }
}

TEST(Safetensors, RoundTripsEveryDtype) {
  ScratchDir dir;
  torch::manual_seed(1);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"bf16", torch::randn({3, 5}).to(torch::kBFloat16)},
      {"f16", torch::randn({7}).to(torch::kFloat16)},
      {"f32", torch::randn({2, 3, 4})},
      {"f64", torch::randn({3}, torch::kFloat64)},
      {"u8", torch::randint(0, 255, {9}, torch::kUInt8)},
      {"i8", torch::randint(-128, 127, {4, 2}, torch::kInt8)},
      {"i32", torch::randint(-1000, 1000, {5}, torch::kInt32)},
      {"i64", torch::randint(-1000, 1000, {6}, torch::kInt64)},
      {"scalar_like", torch::randn({1})},
      {"strided", torch::randn({4, 6}).t()},  // non-contiguous input
  };
  write_safetensors(dir / "x.safetensors", tensors, {{"format", "pt"}});
  SafetensorsFile file(dir / "x.safetensors");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const torch::Tensor back = file.view(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(back, t.contiguous())) << name;
  }
}

TEST(Safetensors, HeaderIsPaddedAndDataAligned) {
  ScratchDir dir;
  write_safetensors(dir / "x.safetensors",
                    {{"a", torch::ones({3}, torch::kInt8)}, {"b", torch::ones({2})}});
  std::ifstream in(dir / "x.safetensors", std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  SafetensorsFile file(dir / "x.safetensors");
  EXPECT_EQ(file.entry("b").begin, 0u);  // the wider dtype comes first
}

TEST(Safetensors, RejectsTruncatedFile) {
  ScratchDir dir;
  write_safetensors(dir / "ok.safetensors", {{"w", torch::randn({16, 16})}});
  std::ifstream in(dir / "ok.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  std::ofstream(dir / "cut.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() - 100);
  expect_rejected(dir / "cut.safetensors", "out of range");
  std::ofstream(dir / "tiny.safetensors", std::ios::binary) << "abc";
  expect_rejected(dir / "tiny.safetensors", "truncated");
}

TEST(Safetensors, RejectsAFifoWithoutBlocking) {
  ScratchDir dir;
  ASSERT_EQ(::mkfifo((dir / "p.safetensors").c_str(), 0600), 0);  // no writer: open would block
  expect_rejected(dir / "p.safetensors", "not a regular file");
}

TEST(Safetensors, RejectsBadHeaderLength) {
  ScratchDir dir;
  write_raw(dir / "x.safetensors", "{}", "", /*header_len_override=*/1ull << 40);
  expect_rejected(dir / "x.safetensors", "bad header length");
  write_raw(dir / "y.safetensors", "{}", "", /*header_len_override=*/0xffffffffffffffffull);
  expect_rejected(dir / "y.safetensors", "bad header length");
}

TEST(Safetensors, RejectsInvalidJson) {
  ScratchDir dir;
  write_raw(dir / "x.safetensors", "{\"a\": [1, 2", "");
  expect_rejected(dir / "x.safetensors", "not valid JSON");
  write_raw(dir / "y.safetensors", "[1, 2]", "");
  expect_rejected(dir / "y.safetensors", "not a JSON object");
}

TEST(Safetensors, RejectsOverlappingOffsets) {
  ScratchDir dir;
  write_raw(
      dir / "x.safetensors",
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      std::string(12, '\0'));
  expect_rejected(dir / "x.safetensors", "overlapping");
}

TEST(Safetensors, RejectsDtypeShapeSizeMismatch) {
  ScratchDir dir;
  write_raw(dir / "x.safetensors", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
            std::string(8, '\0'));
  expect_rejected(dir / "x.safetensors", "give 12 bytes but data_offsets span 8");
  write_raw(dir / "y.safetensors", R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})",
            std::string(8, '\0'));
  expect_rejected(dir / "y.safetensors", "unsupported dtype");
  write_raw(dir / "z.safetensors", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
            std::string(8, '\0'));
  expect_rejected(dir / "z.safetensors", "shape");
  write_raw(dir / "w.safetensors", R"({"a":{"dtype":"F32","shape":[2]}})", std::string(8, '\0'));
  expect_rejected(dir / "w.safetensors", "data_offsets");
  write_raw(
      dir / "v.safetensors",
      R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})",
      std::string(8, '\0'));
  expect_rejected(dir / "v.safetensors", "too large");
}

TEST(Safetensors, WriterLeavesNoTemporaryFiles) {
  ScratchDir dir;
  write_safetensors(dir / "x.safetensors", {{"a", torch::randn({4})}});
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

}  // namespace
}  // namespace gemma
