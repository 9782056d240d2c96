// Small random Gemma 4 models and scratch folders for the model tests.
#pragma once

#include <filesystem>
#include <string>

#include <torch/torch.h>

#include "model/gemma4_config.h"
#include "model/gemma4_model.h"

namespace gemma::testing {

// A bundled config by name ("tiny-e2b", "tiny-31b", "tiny-moe", ...).
Gemma4Config bundled_config(const std::string& name);

// A model of `config` in `dtype` with random weights from `seed` (never zeros).
Gemma4ForCausalLM random_model(const Gemma4Config& config, uint64_t seed,
                               torch::ScalarType dtype = torch::kFloat32);

// Writes random_model(config, seed, dtype) as a checkpoint folder `dir` (multimodal layout).
void write_random_checkpoint(const Gemma4Config& config, uint64_t seed, torch::ScalarType dtype,
                             const std::filesystem::path& dir);

// Logits of `ids` [B, T] without building an autograd graph.
torch::Tensor logits_of(Gemma4ForCausalLM& model, const torch::Tensor& ids);

// Random token ids [B, T] in [0, vocab).
torch::Tensor random_ids(int64_t batch, int64_t length, int64_t vocab, uint64_t seed);

// max |a - b| / max |b|.
double relative_error(const torch::Tensor& a, const torch::Tensor& b);

// A fresh folder under the system temp dir, removed when the object dies.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

}  // namespace gemma::testing
