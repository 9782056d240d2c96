// Decoding with a Gemma4ForCausalLM: a sampler (greedy at temperature 0; else temperature, top-k,
// top-p, seeded) and the loop that prefills prompts (left-padded into one batch) into a KvCache and
// then feeds one sampled token per step until a stop id or the token budget (§5.3).
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "model/gemma4_model.h"
#include "model/kv_cache.h"

namespace gemma {

class Gemma4StepDecoder;

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  uint64_t seed = 0;
};

// Picks next tokens from logits [B, V]; sampling draws from one CPU generator, so a seed gives the
// same tokens on every device.
class Sampler {
 public:
  explicit Sampler(const SamplingOptions& options);
  torch::Tensor next(const torch::Tensor& logits);  // -> [B] int64 on the CPU

 private:
  SamplingOptions options_;
  at::Generator generator_;
};

struct GenerationOptions {
  int64_t max_new_tokens = 256;
  SamplingOptions sampling;
  std::vector<int64_t> stop_ids;
  bool use_cache = true;  // false: recompute the whole sequence every step (a test oracle)
  // Decode through Gemma4StepDecoder where the model allows it (model/gemma4_step_decoder.h);
  // false: every step through the LibTorch forward (its reference).
  bool step_decoder = true;
  // Where the caller keeps the step decoder between calls with one model, unchanged in between:
  // the first call builds it there and later ones reuse what it built (its views of the weights,
  // their 2 MB pages, the NF4 block tables). Null: each call builds its own.
  std::shared_ptr<Gemma4StepDecoder>* step_decoder_slot = nullptr;
};

struct GenerationResult {
  std::vector<std::vector<int64_t>> tokens;  // per prompt, stop id included when one was hit
  std::vector<std::string> finish_reason;    // "stop" or "length"
  bool used_step_decoder = false;
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// Called with (prompt index, token) as each token is produced.
using TokenCallback = std::function<void(size_t, int64_t)>;

// The stop ids of a checkpoint's generation_config.json (`eos_token_id`, an id or a list), or
// nothing when the folder has no such file. InputError when the file is malformed.
std::optional<std::vector<int64_t>> read_generation_stop_ids(
    const std::filesystem::path& model_dir);

// Generates a continuation of each prompt. With `cache` (one prompt only), the prompt continues
// whatever the cache already holds, and the cache keeps everything fed to it (the last sampled
// token is not fed).
GenerationResult generate(Gemma4ForCausalLM& model,
                          const std::vector<std::vector<int64_t>>& prompts,
                          const GenerationOptions& options, const TokenCallback& on_token = {},
                          KvCache* cache = nullptr);

}  // namespace gemma
