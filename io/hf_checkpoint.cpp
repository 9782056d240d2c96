#include "io/hf_checkpoint.h"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "io/atomic_output.h"
#include "io/bounded_json.h"
#include "io/input_error.h"
#include "io/string_match.h"

namespace gemma {
namespace fs = std::filesystem;
using json = nlohmann::json;

HfCheckpointReader::HfCheckpointReader(const fs::path& dir) {
  const fs::path index_path = dir / kCheckpointIndexFile;
  const fs::path single_path = dir / kSingleCheckpointFile;
  // The error_code overloads: a folder path the file system refuses (too long, no permission)
  // is "not a checkpoint folder" below, not a filesystem_error.
  std::error_code error;
  if (fs::exists(index_path, error)) {
    sharded_ = true;
    const std::string where = index_path.string();
    json index;
    index = parse_json_input(read_text_file(index_path), where);
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      throw InputError(where + ": expected an object with a \"weight_map\" object");
    }
    std::map<std::string, size_t> shard_index;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it->is_string())
        throw InputError(where + ": weight_map[\"" + error_excerpt(it.key()) +
                         "\"] is not a file name");
      const std::string name = it->get<std::string>();
      // Shards live beside the index: a path that leaves the folder is refused.
      if (name.empty() || name.find('/') != std::string::npos ||
          name.find('\0') != std::string::npos || name == "." || name == "..") {
        throw InputError(where + ": weight_map[\"" + error_excerpt(it.key()) + "\"] names \"" +
                         error_excerpt(name) + "\", not a file in the checkpoint folder");
      }
      auto found = shard_index.find(name);
      if (found == shard_index.end()) {
        const fs::file_status shard = fs::status(dir / name, error);
        if (!fs::exists(shard)) {
          // ENAMETOOLONG and the like are reported as "cannot be read", not thrown.
          const std::string why = error && error != std::errc::no_such_file_or_directory
                                      ? "cannot be read: " + error.message()
                                      : std::string("does not exist");
          throw InputError(where + ": shard \"" + error_excerpt(name) + "\" (for \"" +
                           error_excerpt(it.key()) + "\") " + why);
        }
        files_.push_back(std::make_unique<SafetensorsFile>(dir / name));
        found = shard_index.emplace(name, files_.size() - 1).first;
      }
      if (!files_[found->second]->contains(it.key())) {
        throw InputError(where + ": \"" + error_excerpt(it.key()) + "\" is listed in shard \"" +
                         error_excerpt(name) + "\" but that file has no such tensor");
      }
      file_of_[it.key()] = found->second;
    }
  } else if (fs::exists(single_path, error)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single_path));
    for (const std::string& key : files_[0]->names()) file_of_[key] = 0;
  } else {
    throw InputError(dir.string() + ": no " + kSingleCheckpointFile + " or " +
                     kCheckpointIndexFile + " (not a Hugging Face checkpoint folder)");
  }
}

std::vector<std::string> HfCheckpointReader::keys() const {
  std::vector<std::string> out;
  for (const auto& kv : file_of_) out.push_back(kv.first);
  return out;
}

const SafetensorsFile& HfCheckpointReader::file(const std::string& key) const {
  const auto it = file_of_.find(key);
  TORCH_CHECK(it != file_of_.end(), "HfCheckpointReader: no tensor ", key);
  return *files_[it->second];
}

const SafetensorsEntry& HfCheckpointReader::entry(const std::string& key) const {
  return file(key).entry(key);
}
torch::Tensor HfCheckpointReader::view(const std::string& key) const { return file(key).view(key); }
void HfCheckpointReader::release(const std::string& key) const { file(key).release(key); }

std::vector<std::string> write_hf_checkpoint(const fs::path& dir,
                                             const std::vector<HfCheckpointTensor>& tensors,
                                             uint64_t shard_bytes) {
  // Plan the shards first: the file names carry the shard count.
  std::vector<std::vector<size_t>> shards(1);
  uint64_t current = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    uint64_t nbytes = c10::elementSize(tensors[i].dtype);
    for (int64_t d : tensors[i].shape) nbytes *= static_cast<uint64_t>(d);
    if (current > 0 && current + nbytes > shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += nbytes;
    total += nbytes;
  }
  std::vector<std::string> names;
  if (shards.size() == 1) {
    names.push_back(kSingleCheckpointFile);
  } else {
    for (size_t s = 0; s < shards.size(); ++s) {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      names.emplace_back(name);
    }
  }
  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    std::vector<std::pair<std::string, torch::Tensor>> shard;
    for (size_t i : shards[s]) {
      torch::Tensor t = tensors[i].make();
      // The declared shape only plans the shards (a quantized part's size can be known only after
      // quantizing); the dtype must be the declared one.
      TORCH_CHECK(t.scalar_type() == tensors[i].dtype, "write_hf_checkpoint: ", tensors[i].key,
                  " does not have its declared dtype");
      shard.emplace_back(tensors[i].key, std::move(t));
      weight_map[tensors[i].key] = names[s];
    }
    write_safetensors(dir / names[s], shard, {{"format", "pt"}});
  }
  if (shards.size() > 1) {
    const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomically(dir / kCheckpointIndexFile, index.dump(2) + "\n");
    names.push_back(kCheckpointIndexFile);
  }
  return names;
}

void copy_hf_checkpoint_side_files(const std::filesystem::path& from,
                                   const std::filesystem::path& to) {
  for (const auto& entry : std::filesystem::directory_iterator(from)) {
    const std::string name = entry.path().filename().string();
    const bool weights = ends_with(name, ".safetensors");
    if (entry.is_regular_file() && !weights && name != "config.json" &&
        name != kCheckpointIndexFile) {
      std::filesystem::copy_file(entry.path(), to / name);
    }
  }
}

}  // namespace gemma
