#include "io/safetensors.h"
#include "io/bounded_json.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/atomic_output.h"
#include "io/input_error.h"

namespace gemma {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The safetensors dtype names we read and write (the format's own spelling).
struct DtypeName {
  const char* name;
  torch::ScalarType dtype;
};
constexpr DtypeName kDtypeNames[] = {
    {"BF16", torch::kBFloat16}, {"F16", torch::kFloat16}, {"F32", torch::kFloat32},
    {"F64", torch::kFloat64},   {"U8", torch::kUInt8},    {"I8", torch::kInt8},
    {"I16", torch::kInt16},     {"I32", torch::kInt32},   {"I64", torch::kInt64},
    {"BOOL", torch::kBool},
};

// Same cap as the reference implementation: a larger header is certainly corrupt.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

}  // namespace

torch::ScalarType safetensors_dtype_from_name(const std::string& name, const std::string& where) {
  for (const auto& d : kDtypeNames) {
    if (name == d.name) return d.dtype;
  }
  throw InputError(where + ": unsupported dtype \"" + name +
                   "\" (expected one of BF16, F16, F32, F64, U8, I8, I16, I32, I64, BOOL)");
}

std::string safetensors_dtype_name(torch::ScalarType dtype) {
  for (const auto& d : kDtypeNames) {
    if (dtype == d.dtype) return d.name;
  }
  TORCH_CHECK(false, "safetensors: cannot store dtype ", c10::toString(dtype));
}

struct SafetensorsFile::Mapping {
  void* address = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (address != nullptr && address != MAP_FAILED) ::munmap(address, size);
  }
};

SafetensorsFile::SafetensorsFile(const fs::path& path) : path_(path) {
  const std::string where = path.string();
  // O_NONBLOCK: a FIFO in place of the file must not block the open; fstat then refuses it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw InputError(where + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(where + ": not a regular file");
  }
  note_input_file(path);
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw InputError(where + ": truncated: " + std::to_string(file_size) +
                     " bytes, shorter than the 8-byte header length");
  }
  mapping_ = std::make_shared<Mapping>();
  mapping_->size = file_size;
  mapping_->address = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping_->address == MAP_FAILED) {
    throw InputError(where + ": cannot map: " + std::strerror(errno));
  }
  const auto* bytes = static_cast<const uint8_t*>(mapping_->address);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes || header_len > file_size - 8) {
    throw InputError(where + ": bad header length " + std::to_string(header_len) + " (file has " +
                     std::to_string(file_size - 8) + " bytes after the length field)");
  }
  data_ = bytes + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  json header;
  try {
    header = parse_bounded_json(
        std::string_view(reinterpret_cast<const char*>(bytes) + 8, header_len), where + ": header");
  } catch (const json::exception& e) {
    throw InputError(where + ": header is not valid JSON: " + json_error_detail(e));
  }
  if (!header.is_object()) throw InputError(where + ": header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const std::string at = where + ": tensor \"" + name + "\"";
    if (name == "__metadata__") {
      if (!it->is_object()) throw InputError(where + ": __metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string())
          throw InputError(where + ": __metadata__." + m.key() + " is not a string");
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const json& e = *it;
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
        !e.contains("data_offsets")) {
      throw InputError(at + ": expected an object with dtype, shape and data_offsets");
    }
    if (!e["dtype"].is_string()) throw InputError(at + ": dtype is not a string");
    SafetensorsEntry entry;
    entry.name = name;
    entry.dtype = safetensors_dtype_from_name(e["dtype"].get<std::string>(), at);
    if (!e["shape"].is_array()) throw InputError(at + ": shape is not an array");
    uint64_t numel = 1;
    for (const json& dim : e["shape"]) {
      if (!dim.is_number_unsigned())
        throw InputError(at + ": shape holds a non-integer or negative value");
      const uint64_t d = dim.get<uint64_t>();
      if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / 8 / d) {
        throw InputError(at + ": shape is too large");
      }
      numel *= d;
      entry.shape.push_back(static_cast<int64_t>(d));
    }
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned()) {
      throw InputError(at + ": data_offsets must be two non-negative integers");
    }
    entry.begin = off[0].get<uint64_t>();
    entry.end = off[1].get<uint64_t>();
    if (entry.begin > entry.end || entry.end > data_size) {
      throw InputError(at + ": data_offsets [" + std::to_string(entry.begin) + ", " +
                       std::to_string(entry.end) + "] out of range (data section has " +
                       std::to_string(data_size) + " bytes; truncated file?)");
    }
    const uint64_t expected = numel * c10::elementSize(entry.dtype);
    if (entry.end - entry.begin != expected) {
      throw InputError(at + ": dtype " + e["dtype"].get<std::string>() + " and shape give " +
                       std::to_string(expected) + " bytes but data_offsets span " +
                       std::to_string(entry.end - entry.begin));
    }
    entries_.emplace(name, std::move(entry));
  }

  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& [name, entry] : entries_) {
    if (entry.end > entry.begin) by_offset.push_back(&entry);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      throw InputError(where + ": tensors \"" + by_offset[i - 1]->name + "\" and \"" +
                       by_offset[i]->name + "\" have overlapping data_offsets");
    }
  }
}

SafetensorsFile::~SafetensorsFile() = default;

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) throw InputError(path_.string() + ": no tensor \"" + name + "\"");
  return it->second;
}

torch::Tensor SafetensorsFile::view(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const auto options = torch::TensorOptions().dtype(e.dtype);
  auto* ptr = const_cast<uint8_t*>(data_ + e.begin);
  if (e.end == e.begin) return torch::empty(e.shape, options);
  auto keep_alive = mapping_;
  torch::Tensor t = torch::from_blob(
      ptr, e.shape, [keep_alive](void*) mutable { keep_alive.reset(); }, options);
  if (reinterpret_cast<uintptr_t>(ptr) % c10::elementSize(e.dtype) != 0) return t.clone();
  return t;
}

void SafetensorsFile::release(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const long page = ::sysconf(_SC_PAGESIZE);
  auto first = reinterpret_cast<uintptr_t>(data_ + e.begin);
  const auto last = reinterpret_cast<uintptr_t>(data_ + e.end);
  first = (first + page - 1) / page * page;  // only whole pages that hold nothing else
  const uintptr_t last_page = last / page * page;
  if (last_page > first) {
    // NOLINTNEXTLINE(performance-no-int-to-ptr): page arithmetic on the mapping needs integers
    ::madvise(reinterpret_cast<void*>(first), last_page - first, MADV_DONTNEED);
  }
}

void write_safetensors(const fs::path& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const size_t ea = tensors[a].second.element_size(), eb = tensors[b].second.element_size();
    if (ea != eb) return ea > eb;
    return tensors[a].first < tensors[b].first;
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    TORCH_CHECK(header.find(name) == header.end(), "write_safetensors: duplicate name ", name);
    const uint64_t nbytes = t.numel() * t.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // keep the data 8-byte aligned

  AtomicFileWriter out(path);
  uint8_t length[8];
  const uint64_t n = header_text.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>((n >> (8 * i)) & 0xff);
  out.write(length, 8);
  out.write(header_text.data(), header_text.size());
  for (size_t i : order) {
    const torch::Tensor t = tensors[i].second.detach().to(torch::kCPU).contiguous();
    out.write(t.data_ptr(), t.numel() * t.element_size());
  }
  out.commit();
}

}  // namespace gemma
