// precompute_ref_log_probs' cache: the reference's log-probs of every example, computed once
// before training and kept in output_dir/ref_logps.json with what they depend on (the data
// files' contents, the base model, the reference adapter, the tokenization and length
// settings). A resumed run or a later run with the same key reads them; any change rebuilds.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace gemma {

constexpr const char* kReferenceLogpsFile = "ref_logps.json";

// A 64-bit FNV-1a digest of the files' bytes in order, as 16 hex digits (names not included).
std::string files_digest(const std::vector<std::filesystem::path>& files);

// What a model folder's identity is for the cache: config.json's digest and the weight files'
// names and sizes (hashing gigabytes of weights at every start would cost more than the pass).
nlohmann::json model_identity(const std::filesystem::path& model_dir);

// Per split ("train", "eval"): per example, the reference values (DPO: [chosen, rejected]; KTO:
// [completion, kl]).
struct ReferenceLogpsCache {
  nlohmann::json key;
  std::vector<std::vector<double>> train, eval;
};

// The cache in `output_dir` when it exists and its key equals `key`; nullopt otherwise (also for
// a file this version cannot read, which is rebuilt).
std::optional<ReferenceLogpsCache> read_reference_logps(const std::filesystem::path& output_dir,
                                                        const nlohmann::json& key);

void write_reference_logps(const std::filesystem::path& output_dir,
                           const ReferenceLogpsCache& cache);

}  // namespace gemma
