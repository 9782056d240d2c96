#include "io/hf_checkpoint.h"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>

#include "io/input_error.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::ScratchDir;

std::vector<HfCheckpointTensor> some_tensors(std::map<std::string, torch::Tensor>& values) {
  torch::manual_seed(7);
  for (int i = 0; i < 6; ++i) values["t" + std::to_string(i)] = torch::randn({100 + i, 10});
  std::vector<HfCheckpointTensor> out;
  for (const auto& [key, v] : values) {
    out.push_back({key, v.sizes().vec(), torch::kFloat32, [v] { return v; }});
  }
  return out;
}

TEST(Checkpoint, SingleFileWhenItFits) {
  ScratchDir dir;
  std::map<std::string, torch::Tensor> values;
  const auto files = write_hf_checkpoint(dir.path(), some_tensors(values), 1'000'000);
  ASSERT_EQ(files, std::vector<std::string>{kSingleCheckpointFile});
  HfCheckpointReader reader(dir.path());
  EXPECT_FALSE(reader.sharded());
  for (const auto& [key, v] : values) EXPECT_TRUE(torch::equal(reader.view(key), v)) << key;
}

TEST(Checkpoint, ShardsWithAnIndex) {
  ScratchDir dir;
  std::map<std::string, torch::Tensor> values;
  const auto files =
      write_hf_checkpoint(dir.path(), some_tensors(values), 9000);  // ~2 tensors a shard
  EXPECT_GT(files.size(), 3u);
  EXPECT_EQ(files.back(), kCheckpointIndexFile);
  EXPECT_EQ(files.front(),
            "model-00001-of-0000" + std::to_string(files.size() - 1) + ".safetensors");
  HfCheckpointReader reader(dir.path());
  EXPECT_TRUE(reader.sharded());
  EXPECT_EQ(reader.keys().size(), values.size());
  for (const auto& [key, v] : values) EXPECT_TRUE(torch::equal(reader.view(key), v)) << key;
}

void expect_reader_error(const std::filesystem::path& dir, const std::string& needle) {
  try {
    HfCheckpointReader reader(dir);
    FAIL() << "accepted; expected: " << needle;
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Checkpoint, RejectsBadIndexes) {
  ScratchDir dir;
  expect_reader_error(dir.path(), "not a Hugging Face checkpoint folder");
  std::ofstream(dir / kCheckpointIndexFile) << R"({"weight_map": {"a": "../../etc/passwd"}})";
  expect_reader_error(dir.path(), "not a file in the checkpoint folder");
  std::ofstream(dir / kCheckpointIndexFile) << R"({"weight_map": {"a": "missing.safetensors"}})";
  expect_reader_error(dir.path(), "does not exist");
  std::ofstream(dir / kCheckpointIndexFile) << R"({"weight_map": [1]})";
  expect_reader_error(dir.path(), "weight_map");
  write_safetensors(dir / "s.safetensors", {{"b", torch::ones({2})}});
  std::ofstream(dir / kCheckpointIndexFile) << R"({"weight_map": {"a": "s.safetensors"}})";
  expect_reader_error(dir.path(), "has no such tensor");
}

// A shard name the file system cannot take (over NAME_MAX) is an InputError, not a
// filesystem_error; a FIFO in place of a shard is refused without blocking.
TEST(Checkpoint, ShardNamesTheFileSystemRefusesAndFifos) {
  ScratchDir dir;
  const std::string long_name(5000, 'x');
  std::ofstream(dir / kCheckpointIndexFile) << R"({"weight_map": {"a": ")" + long_name + R"("}})";
  expect_reader_error(dir.path(), "cannot be read");
  ASSERT_EQ(::mkfifo((dir / "pipe.safetensors").c_str(), 0600), 0);
  std::ofstream(dir / kCheckpointIndexFile) << R"({"weight_map": {"a": "pipe.safetensors"}})";
  expect_reader_error(dir.path(), "not a regular file");
}

}  // namespace
}  // namespace gemma
