// GgufReader: a GGUF file (v2/v3) read back: its metadata, its tensor infos and, on request, a
// tensor's bytes or values. Every count, length and offset is checked against the file's size
// before it is used, so a damaged or hostile file is an InputError naming the file and the field,
// never a crash or a huge allocation (tests/fuzz drives parse_gguf on random bytes).
#pragma once

#include <cstdint>
#include <filesystem>
#include <istream>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "io/gguf_writer.h"

namespace gemma {

// One metadata value. Scalars use the member of their kind (unsigned types `u`, signed `i`,
// floats `f`, bool `b`, string `s`); an array has its elements' type and `items`.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  GgufType array_type = GgufType::kUint8;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0.0;
  bool b = false;
  std::string s;
  std::vector<GgufValue> items;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is contiguous
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t nbytes = 0;
};

struct GgufHeader {
  uint32_t version = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata;  // in file order
  std::vector<GgufTensorInfo> tensors;                      // in file order
  uint64_t alignment = kGgufAlignment;
  uint64_t data_offset = 0;  // where the data section starts in the file
};

// Parses the header of a GGUF stream of `size` bytes and checks that every tensor lies inside it
// at an aligned offset. `where` names the source in errors.
GgufHeader parse_gguf(std::istream& in, uint64_t size, const std::string& where);

class GgufReader {
 public:
  explicit GgufReader(std::filesystem::path path);

  const GgufHeader& header() const { return header_; }
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const {
    return header_.metadata;
  }
  const std::vector<GgufTensorInfo>& tensors() const { return header_.tensors; }
  // nullptr when absent.
  const GgufValue* find(const std::string& key) const;
  const GgufTensorInfo* find_tensor(const std::string& name) const;

  // The stored bytes of `info`, as uint8.
  torch::Tensor tensor_bytes(const GgufTensorInfo& info) const;
  // The values of `info` as float32 in PyTorch order (ne reversed).
  torch::Tensor tensor_values(const GgufTensorInfo& info) const;

 private:
  std::filesystem::path path_;
  GgufHeader header_;
};

}  // namespace gemma
