// Reading and writing the safetensors format (8-byte little-endian header length, a JSON header
// of {name: {dtype, shape, data_offsets}}, then raw little-endian data).
// SafetensorsFile maps the file read-only and hands out tensors lazily, one at a time, so a
// checkpoint streams into a model without ever holding a second copy of it. The header is
// untrusted: every field is validated when the file is opened.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace gemma {

struct SafetensorsEntry {
  std::string name;
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
};

// "BF16" <-> torch::kBFloat16 and friends; throws InputError naming `where` on an unknown name.
torch::ScalarType safetensors_dtype_from_name(const std::string& name, const std::string& where);
std::string safetensors_dtype_name(torch::ScalarType dtype);

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws InputError naming the file and the problem.
  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;

  // A CPU tensor viewing the mapped bytes (read-only memory: never write to it). It keeps the
  // mapping alive. Copied instead when the bytes are not aligned for the dtype.
  torch::Tensor view(const std::string& name) const;

  // Tells the kernel that `name`'s pages are no longer needed, so streaming a checkpoint does not
  // leave every page it touched resident.
  void release(const std::string& name) const;

 private:
  struct Mapping;
  std::filesystem::path path_;
  std::shared_ptr<Mapping> mapping_;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (any device/dtype among the supported ones, contiguous or not) to `path`
// atomically. Tensors are laid out largest element size first so every one stays aligned.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace gemma
