#include "io/gguf_writer.h"

#include <cstring>

namespace gemma {

namespace {

// GGUF is little-endian; so are the machines we run on (x86-64, aarch64).
template <typename T>
void append_pod(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

void append_string(std::string& out, const std::string& s) {
  append_pod<uint64_t>(out, s.size());
  out += s;
}

uint64_t padding_for(uint64_t size) {
  return (kGgufAlignment - size % kGgufAlignment) % kGgufAlignment;
}

int64_t element_count(const std::vector<int64_t>& ne) {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

// roundf(): half away from zero, computed exactly in float32 as ggml's quantize_row_q8_0_ref
// (a plain floor(|v| + 0.5) would round 0.49999997 up).
torch::Tensor round_half_away(const torch::Tensor& v) {
  const torch::Tensor a = v.abs();
  const torch::Tensor whole = a.floor();
  return (whole + (2 * (a - whole)).floor()) * v.sign();
}

}  // namespace

const char* ggml_type_name(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return "F32";
    case GgmlType::kF16:
      return "F16";
    case GgmlType::kQ8_0:
      return "Q8_0";
    case GgmlType::kBF16:
      return "BF16";
  }
  return "?";
}

bool ggml_type_fits(GgmlType type, const std::vector<int64_t>& ne) {
  if (type != GgmlType::kQ8_0) return true;
  return !ne.empty() && ne[0] % kQ8_0BlockValues == 0;
}

uint64_t ggml_nbytes(GgmlType type, const std::vector<int64_t>& ne) {
  TORCH_CHECK(ggml_type_fits(type, ne), "ggml_nbytes: ", ggml_type_name(type),
              " cannot hold ne[0] = ", ne.empty() ? 0 : ne[0]);
  const auto n = static_cast<uint64_t>(element_count(ne));
  switch (type) {
    case GgmlType::kF32:
      return 4 * n;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return 2 * n;
    case GgmlType::kQ8_0:
      return n / kQ8_0BlockValues * kQ8_0BlockBytes;
  }
  TORCH_CHECK(false, "ggml_nbytes: unknown type");
}

torch::Tensor ggml_encode(const torch::Tensor& values, GgmlType type) {
  const torch::Tensor x = values.to(torch::kFloat32).contiguous().reshape(-1);
  switch (type) {
    case GgmlType::kF32:
      return x.view(torch::kUInt8);
    case GgmlType::kF16:
      return x.to(torch::kHalf).view(torch::kUInt8);
    case GgmlType::kBF16:
      return x.to(torch::kBFloat16).view(torch::kUInt8);
    case GgmlType::kQ8_0: {
      TORCH_CHECK(x.numel() % kQ8_0BlockValues == 0, "ggml_encode: Q8_0 needs whole blocks");
      const torch::Tensor blocks = x.view({-1, kQ8_0BlockValues});
      const torch::Tensor d = blocks.abs().amax(1, /*keepdim=*/true) / 127.0f;
      const torch::Tensor inv_d = torch::where(d == 0, torch::zeros_like(d), 1.0f / d);
      const torch::Tensor q = round_half_away(blocks * inv_d).to(torch::kInt8);
      return torch::cat({d.to(torch::kHalf).view(torch::kUInt8), q.view(torch::kUInt8)}, 1)
          .reshape(-1);
    }
  }
  TORCH_CHECK(false, "ggml_encode: unknown type");
}

torch::Tensor ggml_decode(const torch::Tensor& bytes, GgmlType type, int64_t count) {
  // A fresh copy: the dtype views below need an aligned, contiguous buffer.
  const torch::Tensor b = bytes.to(torch::kUInt8).reshape(-1).clone();
  TORCH_CHECK(static_cast<uint64_t>(b.numel()) == ggml_nbytes(type, {count}),
              "ggml_decode: byte count does not match");
  switch (type) {
    case GgmlType::kF32:
      return b.view(torch::kFloat32);
    case GgmlType::kF16:
      return b.view(torch::kHalf).to(torch::kFloat32);
    case GgmlType::kBF16:
      return b.view(torch::kBFloat16).to(torch::kFloat32);
    case GgmlType::kQ8_0: {
      const torch::Tensor blocks = b.view({-1, kQ8_0BlockBytes});
      const torch::Tensor d =
          blocks.narrow(1, 0, 2).contiguous().view(torch::kHalf).to(torch::kFloat32);
      const torch::Tensor q =
          blocks.narrow(1, 2, kQ8_0BlockValues).contiguous().view(torch::kInt8).to(torch::kFloat32);
      return (q * d).reshape(-1);
    }
  }
  TORCH_CHECK(false, "ggml_decode: unknown type");
}

void GgufWriter::begin_key(const std::string& key, GgufType type) {
  for (const auto& k : keys_) TORCH_CHECK(k != key, "GgufWriter: key ", key, " added twice");
  keys_.push_back(key);
  append_string(metadata_, key);
  append_pod<uint32_t>(metadata_, static_cast<uint32_t>(type));
}

void GgufWriter::add_uint32(const std::string& key, uint32_t value) {
  begin_key(key, GgufType::kUint32);
  append_pod(metadata_, value);
}

void GgufWriter::add_int32(const std::string& key, int32_t value) {
  begin_key(key, GgufType::kInt32);
  append_pod(metadata_, value);
}

void GgufWriter::add_float32(const std::string& key, float value) {
  begin_key(key, GgufType::kFloat32);
  append_pod(metadata_, value);
}

void GgufWriter::add_bool(const std::string& key, bool value) {
  begin_key(key, GgufType::kBool);
  append_pod<uint8_t>(metadata_, value ? 1 : 0);
}

void GgufWriter::add_string(const std::string& key, const std::string& value) {
  begin_key(key, GgufType::kString);
  append_string(metadata_, value);
}

void GgufWriter::add_int32_array(const std::string& key, const std::vector<int32_t>& values) {
  begin_key(key, GgufType::kArray);
  append_pod<uint32_t>(metadata_, static_cast<uint32_t>(GgufType::kInt32));
  append_pod<uint64_t>(metadata_, values.size());
  for (int32_t v : values) append_pod(metadata_, v);
}

void GgufWriter::add_float32_array(const std::string& key, const std::vector<float>& values) {
  begin_key(key, GgufType::kArray);
  append_pod<uint32_t>(metadata_, static_cast<uint32_t>(GgufType::kFloat32));
  append_pod<uint64_t>(metadata_, values.size());
  for (float v : values) append_pod(metadata_, v);
}

void GgufWriter::add_bool_array(const std::string& key, const std::vector<bool>& values) {
  begin_key(key, GgufType::kArray);
  append_pod<uint32_t>(metadata_, static_cast<uint32_t>(GgufType::kBool));
  append_pod<uint64_t>(metadata_, values.size());
  for (bool v : values) append_pod<uint8_t>(metadata_, v ? 1 : 0);
}

void GgufWriter::add_string_array(const std::string& key, const std::vector<std::string>& values) {
  begin_key(key, GgufType::kArray);
  append_pod<uint32_t>(metadata_, static_cast<uint32_t>(GgufType::kString));
  append_pod<uint64_t>(metadata_, values.size());
  for (const auto& v : values) append_string(metadata_, v);
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& ne, GgmlType type,
                            TensorFill fill) {
  for (const auto& t : tensors_) {
    TORCH_CHECK(t.name != name, "GgufWriter: tensor ", name, " added twice");
  }
  TORCH_CHECK(!ne.empty() && ne.size() <= 4, "GgufWriter: ", name, " needs 1 to 4 dimensions");
  const uint64_t nbytes = ggml_nbytes(type, ne);
  tensors_.push_back({name, ne, type, data_size_, nbytes, std::move(fill)});
  data_size_ += nbytes + padding_for(nbytes);
}

std::string GgufWriter::header() const {
  std::string out(kGgufMagic, sizeof(kGgufMagic));
  append_pod<uint32_t>(out, kGgufVersion);
  append_pod<uint64_t>(out, tensors_.size());
  append_pod<uint64_t>(out, keys_.size());
  out += metadata_;
  for (const Tensor& t : tensors_) {
    append_string(out, t.name);
    append_pod<uint32_t>(out, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) append_pod<uint64_t>(out, static_cast<uint64_t>(d));
    append_pod<uint32_t>(out, static_cast<uint32_t>(t.type));
    append_pod<uint64_t>(out, t.offset);
  }
  out.append(padding_for(out.size()), '\0');
  return out;
}

uint64_t GgufWriter::file_size() const { return header().size() + data_size_; }

void GgufWriter::write(const ByteSink& out) const {
  const std::string head = header();
  out(head.data(), head.size());
  const std::string zeros(kGgufAlignment, '\0');
  for (const Tensor& t : tensors_) {
    uint64_t emitted = 0;
    t.fill([&](const void* data, size_t size) {
      emitted += size;
      TORCH_CHECK(emitted <= t.nbytes, "GgufWriter: ", t.name, " produced more than ", t.nbytes,
                  " bytes");
      out(data, size);
    });
    TORCH_CHECK(emitted == t.nbytes, "GgufWriter: ", t.name, " produced ", emitted,
                " bytes, expected ", t.nbytes);
    out(zeros.data(), padding_for(t.nbytes));
  }
}

}  // namespace gemma
