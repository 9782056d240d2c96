// The memory plan: what a recipe's training run will hold at its peak, predicted from config.json
// alone (no weights), component by component, so a run that cannot fit is refused before it
// loads anything, and a user can plan for a model before downloading it. The counts follow this
// implementation's tensors (what autograd saves in each layer, the NF4 parts, the chunked loss),
// and the trainer logs its measured peak beside the prediction (memory_meter.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "model/gemma4_config.h"
#include "trainer/recipe.h"

namespace gemma {

struct MemoryComponent {
  std::string name;       // "base weights (NF4)", "activations", ...
  int64_t bytes = 0;      // at the step's peak
  bool on_device = true;  // false: held in host memory (the PLE table with ple_on_host on CUDA)
  std::string detail;     // how it was counted, in words
};

// One change to the recipe and the device peak it would give.
struct MemoryPlanChange {
  std::string change;  // "training.max_length=1024"
  int64_t device_peak_bytes = 0;
};

struct MemoryPlan {
  std::string device;  // "cpu" or "cuda"
  std::vector<MemoryComponent> components;
  int64_t device_peak_bytes = 0;          // the sum of the components on the device
  int64_t host_bytes = 0;                 // the sum of those in host memory
  std::optional<int64_t> device_memory;   // the budget it was planned against
  std::vector<MemoryPlanChange> changes;  // with a budget it exceeds: what would fit it better
  // With a budget it fits and checkpointing on: keeping the frozen matmuls' outputs
  // (gradient_checkpointing_save_matmuls), when that still fits. Faster, not smaller.
  std::optional<MemoryPlanChange> faster;
  bool fits() const { return !device_memory || device_peak_bytes <= *device_memory; }
};

// The dtype the run computes and keeps its dense tensors in: the recipe's model.dtype
// (bnb_4bit_compute_dtype with load_in_4bit), auto meaning config.json's own.
torch::ScalarType planned_dtype(const Recipe& recipe, const std::string& config_json);
// config.json's dtype (or torch_dtype): what the checkpoint's files hold.
std::optional<torch::ScalarType> stored_dtype(const std::string& config_json);

// The plan for `recipe` on a model of `config` in `dtype` whose files hold `file_dtype`; with
// `device_memory`, the changes that bring a plan over it down, each with its predicted peak.
// The peak is the training steps'; loading the model peaks on its own (memory_meter.h).
MemoryPlan plan_memory(const Gemma4Config& config, torch::ScalarType dtype, const Recipe& recipe,
                       std::optional<int64_t> device_memory = std::nullopt,
                       std::optional<torch::ScalarType> file_dtype = std::nullopt);

// The loss's logits chunk (tokens per chunk of the chunked lm_head) the trainer uses for a
// vocabulary: 1024 tokens, fewer for vocabularies whose float32 chunk would pass 128 MiB.
int64_t loss_chunk_tokens(int64_t vocab_size);

// A human table (components, totals, fit, changes) and the same for tools.
std::string memory_plan_table(const MemoryPlan& plan);
nlohmann::json memory_plan_json(const MemoryPlan& plan);

std::string format_bytes(int64_t bytes);  // "4.48 GiB"

}  // namespace gemma
