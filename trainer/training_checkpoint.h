// A training checkpoint, `output_dir/checkpoint-N/` as transformers' Trainer names it: the PEFT
// adapter (adapter_config.json, adapter_model.safetensors: loadable as it is), the optimizer
// state (optimizer.safetensors, by parameter name), the RNG states (rng_state.safetensors) and
// trainer_state.json (the step, the data position, the logging accumulators and the log history),
// enough to continue the run exactly. Written as a whole folder, atomically.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/gemma4_model.h"
#include "optim/optimizer.h"
#include "peft/lora_adapters.h"

namespace gemma {

// Where the loop stands after an optimizer step, and what it has summed since the last log.
struct TrainingProgress {
  int64_t global_step = 0;
  int64_t epoch = 0;             // the epoch being read (0-based)
  int64_t batches_in_epoch = 0;  // global micro-batches of that epoch already consumed
  // Rows of the epoch's order already consumed (all ranks together); -1 when loaded from a
  // checkpoint that predates it (the loop derives it from batches_in_epoch).
  int64_t samples_in_epoch = 0;
  int64_t num_tokens = 0;     // tokens seen so far (TRL's num_tokens)
  double train_loss_sum = 0;  // Σ step losses, for the final train_loss
  // Since the last logged step:
  double log_loss_sum = 0;
  int64_t log_steps = 0;
  // The objective's metrics, one value per micro-batch as TRL appends them, by name.
  std::map<std::string, std::vector<double>> log_metrics;
  nlohmann::json log_history = nlohmann::json::array();  // every logged metrics object
};

struct CheckpointContents {
  const AdapterSpec* spec;
  std::string prefix;           // the base checkpoint's decoder prefix
  std::string base_model_name;  // recipe model.name_or_path
  const Optimizer* optimizer;
  const TrainingProgress* progress;
  nlohmann::json run;  // what the run was (max_steps, seed, batch sizes), for checks on resume
  // Every rank's RNG state (encode_rng_state()), by rank: one gives rng_state.safetensors, several
  // rng_state_<rank>.safetensors (as the Trainer writes rng_state_<rank>.pth).
  std::vector<std::string> rng_states;
};

// This process's generators (CPU and each CUDA device's) as bytes, to gather on rank 0.
std::string encode_rng_state();

// Writes `output_dir/checkpoint-<step>` (replacing a stale one of the same step).
std::filesystem::path save_training_checkpoint(const std::filesystem::path& output_dir,
                                               Gemma4ForCausalLM& model,
                                               const CheckpointContents& contents);

// The newest `checkpoint-N` folder of `output_dir` that holds a trainer_state.json, if any.
std::optional<std::filesystem::path> newest_checkpoint(const std::filesystem::path& output_dir);

// The checkpoints of `output_dir` by step, oldest first.
std::vector<std::filesystem::path> checkpoints_by_step(const std::filesystem::path& output_dir);

// Loads a checkpoint into the model's attached adapters, the optimizer and the RNG (rank `rank`'s
// state; rank 0's when the checkpoint has none for it, as after a resume with more ranks); returns
// the progress. InputError naming the folder and file for anything missing or not fitting
// (another adapter shape, another optimizer's state). `run` is returned for the caller's checks.
TrainingProgress load_training_checkpoint(const std::filesystem::path& dir,
                                          Gemma4ForCausalLM& model, const std::string& prefix,
                                          Optimizer& optimizer, nlohmann::json* run, int rank = 0);

}  // namespace gemma
