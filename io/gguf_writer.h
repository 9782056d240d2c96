// GgufWriter: a GGUF v3 file (ggml's docs/gguf.md) in one pass: typed metadata key/values, the
// tensor infos, then each tensor's data at a 32-byte aligned offset. Tensor data is produced on
// demand while the file is written, so a model never has to be in memory whole; the header only
// needs each tensor's shape and type. The ggml storage types we write (F32, F16, BF16, Q8_0) are
// encoded here too.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace gemma {

// GGUF metadata value types. Serialized: the numbers are the format's and never change.
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// The ggml tensor types we read and write. Serialized: the numbers are ggml.h's `ggml_type`.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ8_0 = 8,
  kBF16 = 30,
};

constexpr char kGgufMagic[4] = {'G', 'G', 'U', 'F'};
constexpr uint32_t kGgufVersion = 3;
constexpr uint64_t kGgufAlignment = 32;  // the default; we never write general.alignment
// Q8_0 (ggml-common.h `block_q8_0`): 32 values as one f16 scale d = max|x|/127 and 32 int8
// q = round(x/d), 34 bytes.
constexpr int64_t kQ8_0BlockValues = 32;
constexpr int64_t kQ8_0BlockBytes = 2 + kQ8_0BlockValues;

const char* ggml_type_name(GgmlType type);  // "F32", "F16", "BF16", "Q8_0"
// Whether `type` can hold a tensor of `ne` (ggml order): Q8_0 needs whole blocks along ne[0].
bool ggml_type_fits(GgmlType type, const std::vector<int64_t>& ne);
// The bytes of a tensor of `ne` stored as `type` (which must fit).
uint64_t ggml_nbytes(GgmlType type, const std::vector<int64_t>& ne);

// `values` (any float dtype and shape, rows along the last dimension) as the bytes of `type`, in
// a uint8 tensor. F16/BF16 round to nearest even; Q8_0 rounds half away from zero, as ggml's
// reference quantizer (so the bytes equal gguf-py's and llama-quantize's).
torch::Tensor ggml_encode(const torch::Tensor& values, GgmlType type);
// The inverse: `bytes` of `count` values of `type` as float32 [count].
torch::Tensor ggml_decode(const torch::Tensor& bytes, GgmlType type, int64_t count);

class GgufWriter {
 public:
  // Receives the file's bytes in order, in pieces of any size.
  using ByteSink = std::function<void(const void* data, size_t size)>;
  // Produces one tensor's bytes (exactly ggml_nbytes) into the sink, in pieces of any size.
  using TensorFill = std::function<void(const ByteSink& emit)>;

  // Metadata, written in the order added. A key may be added once.
  void add_uint32(const std::string& key, uint32_t value);
  void add_int32(const std::string& key, int32_t value);
  void add_float32(const std::string& key, float value);
  void add_bool(const std::string& key, bool value);
  void add_string(const std::string& key, const std::string& value);
  void add_int32_array(const std::string& key, const std::vector<int32_t>& values);
  void add_float32_array(const std::string& key, const std::vector<float>& values);
  void add_bool_array(const std::string& key, const std::vector<bool>& values);
  void add_string_array(const std::string& key, const std::vector<std::string>& values);

  // A tensor of `ne` (ggml order: ne[0] contiguous) stored as `type`; `fill` runs during write().
  void add_tensor(const std::string& name, const std::vector<int64_t>& ne, GgmlType type,
                  TensorFill fill);

  size_t tensor_count() const { return tensors_.size(); }
  // Bytes write() will produce.
  uint64_t file_size() const;

  // Header, metadata, tensor infos, padding, then every tensor's data (each fill once, in the
  // order added), each padded to kGgufAlignment.
  void write(const ByteSink& out) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> ne;
    GgmlType type;
    uint64_t offset;  // from the start of the data section
    uint64_t nbytes;
    TensorFill fill;
  };
  void begin_key(const std::string& key, GgufType type);
  std::string header() const;

  std::vector<std::string> keys_;
  std::string metadata_;  // the serialized key/values
  std::vector<Tensor> tensors_;
  uint64_t data_size_ = 0;
};

}  // namespace gemma
