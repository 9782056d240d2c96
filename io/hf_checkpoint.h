// A Hugging Face checkpoint folder's tensors: `model.safetensors`, or shards listed by
// `model.safetensors.index.json` ({"metadata": {"total_size": N}, "weight_map": {key: file}}).
// HfCheckpointReader opens every shard lazily mapped and serves tensors one at a time;
// CheckpointWriter splits tensors into shards of at most a given size and writes the index.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "io/safetensors.h"

namespace gemma {

constexpr const char* kSingleCheckpointFile = "model.safetensors";
constexpr const char* kCheckpointIndexFile = "model.safetensors.index.json";

class HfCheckpointReader {
 public:
  // Throws InputError if the folder has neither file, or the index or a shard is invalid.
  explicit HfCheckpointReader(const std::filesystem::path& dir);

  bool contains(const std::string& key) const { return file_of_.count(key) != 0; }
  std::vector<std::string> keys() const;
  const SafetensorsEntry& entry(const std::string& key) const;
  torch::Tensor view(const std::string& key) const;  // mapped, read-only
  void release(const std::string& key) const;
  bool sharded() const { return sharded_; }

 private:
  const SafetensorsFile& file(const std::string& key) const;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> file_of_;
  bool sharded_ = false;
};

// One tensor to write; `make` produces it when its shard is written, so a whole checkpoint never
// needs to sit in memory at once. `shape` plans the shards; the file records what `make` returns.
struct HfCheckpointTensor {
  std::string key;
  std::vector<int64_t> shape;
  torch::ScalarType dtype;
  std::function<torch::Tensor()> make;
};

// Writes the tensors into `dir` (which must exist): one `model.safetensors` when they fit in
// `shard_bytes`, else `model-0000i-of-0000N.safetensors` files plus the index. Returns the files.
std::vector<std::string> write_hf_checkpoint(const std::filesystem::path& dir,
                                             const std::vector<HfCheckpointTensor>& tensors,
                                             uint64_t shard_bytes);

// Copies the files of checkpoint folder `from` that are neither weights (*.safetensors, the
// index) nor config.json into `to`: the tokenizer, generation_config.json, chat template.
void copy_hf_checkpoint_side_files(const std::filesystem::path& from,
                                   const std::filesystem::path& to);

}  // namespace gemma
