#include "io/gguf_reader.h"

#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "io/input_error.h"

namespace gemma {
namespace fs = std::filesystem;

namespace {

constexpr int kMaxArrayDepth = 4;  // GGUF allows nested arrays; nothing we read nests deeper
constexpr uint32_t kMaxDims = 4;   // GGML_MAX_DIMS

// Reads from a stream of known size; never asks for more bytes than remain.
class Cursor {
 public:
  Cursor(std::istream& in, uint64_t size, std::string where)
      : in_(in), size_(size), where_(std::move(where)) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  const std::string& where() const { return where_; }

  void read(void* dst, uint64_t n, const std::string& what) {
    if (n > remaining()) {
      throw InputError(where_ + ": truncated GGUF: " + what + " at byte " + std::to_string(pos_) +
                       " needs " + std::to_string(n) + " bytes, " + std::to_string(remaining()) +
                       " left");
    }
    in_.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    if (!in_) throw InputError(where_ + ": read failed at byte " + std::to_string(pos_));
    pos_ += n;
  }

  template <typename T>
  T pod(const std::string& what) {
    T value;
    read(&value, sizeof(T), what);
    return value;
  }

  std::string string(const std::string& what) {
    const auto n = pod<uint64_t>(what + " length");
    if (n > remaining()) {
      throw InputError(where_ + ": " + what + " length " + std::to_string(n) + " at byte " +
                       std::to_string(pos_) + " exceeds the file");
    }
    std::string s(n, '\0');
    read(s.data(), n, what);
    return s;
  }

 private:
  std::istream& in_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string where_;
};

// The fewest bytes one value of `type` takes, to bound an array's count before allocating.
uint64_t min_value_bytes(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
    case GgufType::kString:
      return 8;
    case GgufType::kArray:
      return 12;
  }
  return 0;
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kFloat64); }

GgufValue read_value(Cursor& c, GgufType type, const std::string& key, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::kUint8:
      v.u = c.pod<uint8_t>(key);
      break;
    case GgufType::kInt8:
      v.i = c.pod<int8_t>(key);  // NOLINT(bugprone-signed-char-misuse): GGUF int8 is signed
      break;
    case GgufType::kUint16:
      v.u = c.pod<uint16_t>(key);
      break;
    case GgufType::kInt16:
      v.i = c.pod<int16_t>(key);
      break;
    case GgufType::kUint32:
      v.u = c.pod<uint32_t>(key);
      break;
    case GgufType::kInt32:
      v.i = c.pod<int32_t>(key);
      break;
    case GgufType::kUint64:
      v.u = c.pod<uint64_t>(key);
      break;
    case GgufType::kInt64:
      v.i = c.pod<int64_t>(key);
      break;
    case GgufType::kFloat32:
      v.f = c.pod<float>(key);
      break;
    case GgufType::kFloat64:
      v.f = c.pod<double>(key);
      break;
    case GgufType::kBool: {
      const auto byte = c.pod<uint8_t>(key);
      if (byte > 1) {
        throw InputError(c.where() + ": key \"" + key + "\": bool value " + std::to_string(byte) +
                         ", expected 0 or 1");
      }
      v.b = byte == 1;
      break;
    }
    case GgufType::kString:
      v.s = c.string("value of \"" + key + "\"");
      break;
    case GgufType::kArray: {
      if (depth >= kMaxArrayDepth) {
        throw InputError(c.where() + ": key \"" + key + "\": arrays nested deeper than " +
                         std::to_string(kMaxArrayDepth));
      }
      const auto elem = c.pod<uint32_t>(key + " element type");
      if (!known_value_type(elem)) {
        throw InputError(c.where() + ": key \"" + key + "\": unknown array element type " +
                         std::to_string(elem));
      }
      v.array_type = static_cast<GgufType>(elem);
      const auto count = c.pod<uint64_t>(key + " array length");
      if (count > c.remaining() / min_value_bytes(v.array_type)) {
        throw InputError(c.where() + ": key \"" + key + "\": array length " +
                         std::to_string(count) + " exceeds the file");
      }
      v.items.reserve(count);
      for (uint64_t k = 0; k < count; ++k) {
        v.items.push_back(read_value(c, v.array_type, key, depth + 1));
      }
      break;
    }
  }
  return v;
}

bool known_ggml_type(uint32_t t) {
  for (GgmlType k : {GgmlType::kF32, GgmlType::kF16, GgmlType::kQ8_0, GgmlType::kBF16}) {
    if (t == static_cast<uint32_t>(k)) return true;
  }
  return false;
}

uint64_t round_up(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

GgufTensorInfo read_tensor_info(Cursor& c) {
  GgufTensorInfo t;
  t.name = c.string("tensor name");
  const std::string where = c.where() + ": tensor \"" + t.name + "\"";
  const auto n_dims = c.pod<uint32_t>(t.name + " dimension count");
  if (n_dims == 0 || n_dims > kMaxDims) {
    throw InputError(where + ": " + std::to_string(n_dims) + " dimensions, expected 1 to " +
                     std::to_string(kMaxDims));
  }
  // ggml keeps element counts in int64; reject anything whose product could overflow it.
  uint64_t count = 1;
  for (uint32_t k = 0; k < n_dims; ++k) {
    const auto d = c.pod<uint64_t>(t.name + " dimension");
    if (d == 0 || d > (uint64_t{1} << 40) || count > (uint64_t{1} << 40) / d) {
      throw InputError(where + ": dimension " + std::to_string(k) + " = " + std::to_string(d) +
                       " is out of range");
    }
    count *= d;
    t.ne.push_back(static_cast<int64_t>(d));
  }
  const auto type = c.pod<uint32_t>(t.name + " type");
  if (!known_ggml_type(type)) {
    throw InputError(where + ": ggml type " + std::to_string(type) +
                     " is not one we read (F32, F16, BF16, Q8_0)");
  }
  t.type = static_cast<GgmlType>(type);
  if (!ggml_type_fits(t.type, t.ne)) {
    throw InputError(where + ": ne[0] = " + std::to_string(t.ne[0]) + " is not a whole number of " +
                     ggml_type_name(t.type) + " blocks");
  }
  t.offset = c.pod<uint64_t>(t.name + " offset");
  t.nbytes = ggml_nbytes(t.type, t.ne);
  return t;
}

}  // namespace

GgufHeader parse_gguf(std::istream& in, uint64_t size, const std::string& where) {
  Cursor c(in, size, where);
  GgufHeader h;
  char magic[4];
  c.read(magic, 4, "magic");
  if (std::memcmp(magic, kGgufMagic, 4) != 0) {
    throw InputError(where + ": not a GGUF file (no \"GGUF\" magic)");
  }
  h.version = c.pod<uint32_t>("version");
  if (h.version != 2 && h.version != 3) {
    throw InputError(where + ": GGUF version " + std::to_string(h.version) + ", expected 2 or 3");
  }
  const auto n_tensors = c.pod<uint64_t>("tensor count");
  const auto n_kv = c.pod<uint64_t>("metadata count");
  // Each key/value takes at least 13 bytes and each tensor info at least 32.
  if (n_kv > c.remaining() / 13) {
    throw InputError(where + ": metadata count " + std::to_string(n_kv) + " exceeds the file");
  }
  std::set<std::string> keys;
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.string("metadata key");
    if (!keys.insert(key).second) throw InputError(where + ": key \"" + key + "\" appears twice");
    const auto type = c.pod<uint32_t>(key + " value type");
    if (!known_value_type(type)) {
      throw InputError(where + ": key \"" + key + "\": unknown value type " + std::to_string(type));
    }
    GgufValue value = read_value(c, static_cast<GgufType>(type), key, 0);
    h.metadata.emplace_back(std::move(key), std::move(value));
  }
  for (const auto& [key, value] : h.metadata) {
    if (key != "general.alignment") continue;
    if (value.type != GgufType::kUint32 || value.u == 0 || (value.u & (value.u - 1)) != 0) {
      throw InputError(where + ": general.alignment must be a uint32 power of two");
    }
    h.alignment = value.u;
  }
  if (n_tensors > c.remaining() / 32) {
    throw InputError(where + ": tensor count " + std::to_string(n_tensors) + " exceeds the file");
  }
  std::set<std::string> names;
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t = read_tensor_info(c);
    if (!names.insert(t.name).second) {
      throw InputError(where + ": tensor \"" + t.name + "\" appears twice");
    }
    h.tensors.push_back(std::move(t));
  }
  h.data_offset = round_up(c.pos(), h.alignment);
  if (h.data_offset > size && !h.tensors.empty()) {
    throw InputError(where + ": truncated GGUF: no data section");
  }
  // As ggml's gguf loader: tensors are packed in order, each at the aligned end of the one before.
  uint64_t expected = 0;
  for (const GgufTensorInfo& t : h.tensors) {
    if (t.offset != expected) {
      throw InputError(where + ": tensor \"" + t.name + "\" at data offset " +
                       std::to_string(t.offset) + ", expected " + std::to_string(expected));
    }
    if (t.nbytes > size - h.data_offset || t.offset > size - h.data_offset - t.nbytes) {
      throw InputError(where + ": tensor \"" + t.name + "\" (" + std::to_string(t.nbytes) +
                       " bytes at data offset " + std::to_string(t.offset) +
                       ") runs past the end of the file");
    }
    expected = round_up(t.offset + t.nbytes, h.alignment);
  }
  return h;
}

GgufReader::GgufReader(fs::path path) : path_(std::move(path)) {
  std::error_code ec;
  if (!fs::is_regular_file(path_, ec) && fs::exists(path_, ec))
    throw InputError(path_.string() + ": not a regular file");
  std::ifstream in(path_, std::ios::binary);
  if (!in) throw InputError(path_.string() + ": cannot open");
  note_input_file(path_);
  const uint64_t size = fs::file_size(path_, ec);
  if (ec) throw InputError(path_.string() + ": cannot read its size: " + ec.message());
  header_ = parse_gguf(in, size, path_.string());
}

const GgufValue* GgufReader::find(const std::string& key) const {
  for (const auto& [k, v] : header_.metadata) {
    if (k == key) return &v;
  }
  return nullptr;
}

const GgufTensorInfo* GgufReader::find_tensor(const std::string& name) const {
  for (const auto& t : header_.tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

torch::Tensor GgufReader::tensor_bytes(const GgufTensorInfo& info) const {
  std::ifstream in(path_, std::ios::binary);
  if (!in) throw InputError(path_.string() + ": cannot open");
  in.seekg(static_cast<std::streamoff>(header_.data_offset + info.offset));
  torch::Tensor bytes = torch::empty({static_cast<int64_t>(info.nbytes)}, torch::kUInt8);
  in.read(reinterpret_cast<char*>(bytes.data_ptr<uint8_t>()),
          static_cast<std::streamsize>(info.nbytes));
  if (!in) throw InputError(path_.string() + ": cannot read tensor \"" + info.name + "\"");
  return bytes;
}

torch::Tensor GgufReader::tensor_values(const GgufTensorInfo& info) const {
  int64_t count = 1;
  for (int64_t d : info.ne) count *= d;
  const std::vector<int64_t> shape(info.ne.rbegin(), info.ne.rend());
  return ggml_decode(tensor_bytes(info), info.type, count).reshape(shape);
}

}  // namespace gemma
