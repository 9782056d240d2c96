#include "trainer/reference_logps_cache.h"

#include <array>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "io/atomic_output.h"
#include "io/bounded_json.h"
#include "io/input_error.h"

namespace gemma {
namespace fs = std::filesystem;
using nlohmann::json;

std::string files_digest(const std::vector<fs::path>& files) {
  uint64_t h = 0xcbf29ce484222325ULL;
  std::array<char, 1 << 16> buffer{};
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) throw InputError(f.string() + ": cannot be read");
    while (in) {
      in.read(buffer.data(), buffer.size());
      const std::streamsize n = in.gcount();
      for (std::streamsize i = 0; i < n; ++i) {
        h ^= static_cast<unsigned char>(buffer[static_cast<size_t>(i)]);
        h *= 0x100000001b3ULL;
      }
    }
  }
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(h));
  return text;
}

json model_identity(const fs::path& model_dir) {
  json weights = json::object();
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(model_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file(ec) && name.size() > 12 &&
        name.compare(name.size() - 12, 12, ".safetensors") == 0)
      weights[name] = entry.file_size(ec);
  }
  return {{"path", fs::absolute(model_dir).lexically_normal().string()},
          {"config", files_digest({model_dir / "config.json"})},
          {"weights", weights}};
}

std::optional<ReferenceLogpsCache> read_reference_logps(const fs::path& output_dir,
                                                        const json& key) {
  const fs::path path = output_dir / kReferenceLogpsFile;
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(path, ec))) return std::nullopt;
  try {
    // Read directly, not as a noted input: a stale cache is rewritten at the same path.
    std::ifstream in(path, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const json root = parse_bounded_json(text, path.string());
    if (root.at("key") != key) return std::nullopt;
    ReferenceLogpsCache cache;
    cache.key = key;
    cache.train = root.at("train").get<std::vector<std::vector<double>>>();
    cache.eval = root.at("eval").get<std::vector<std::vector<double>>>();
    return cache;
  } catch (const json::exception&) {
    return std::nullopt;
  } catch (const InputError&) {
    return std::nullopt;
  }
}

void write_reference_logps(const fs::path& output_dir, const ReferenceLogpsCache& cache) {
  const json root = {{"key", cache.key}, {"train", cache.train}, {"eval", cache.eval}};
  write_file_atomically(output_dir / kReferenceLogpsFile, root.dump() + "\n");
}

}  // namespace gemma
