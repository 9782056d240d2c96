// A checkpoint folder seen with a PEFT adapter folded into its weights (qlora-formats.md §3.7-3.8),
// read lazily tensor by tensor: the base weight is read (dequantized when it is stored in
// bitsandbytes NF4), W + s·B·A is formed in float32 (DoRA: scaled row-wise to m / ‖W + s·B·A‖),
// and nothing else is held. `merge` writes it as an HF checkpoint and `export` as GGUF, so both
// see the same merged numbers.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "io/hf_checkpoint.h"
#include "model/gemma4_config.h"
#include "peft/lora_linear.h"
#include "peft/peft_adapter.h"

namespace gemma {

// W (float32, [out, in]) with the adapter folded in, float32.
torch::Tensor merge_adapter_into_weight(const torch::Tensor& weight, const AdapterTensors& adapter,
                                        const LoraOptions& options);

class MergedCheckpoint {
 public:
  // InputError (and nothing written anywhere) for an adapter whose keys name no weight of this
  // checkpoint or whose shapes do not fit it (another base, a rank mismatch).
  MergedCheckpoint(const std::filesystem::path& model_dir,
                   const std::optional<std::filesystem::path>& adapter_dir);

  const Gemma4Config& config() const { return config_; }
  const std::string& prefix() const { return prefix_; }  // the decoder key prefix of the files
  const std::filesystem::path& dir() const { return dir_; }
  // Every tensor key of the checkpoint, in file order, with bitsandbytes' six NF4 parts of a
  // weight shown as the one weight key.
  const std::vector<std::string>& keys() const { return keys_; }
  bool contains(const std::string& key) const { return shapes_.count(key) != 0; }
  const std::vector<int64_t>& shape(const std::string& key) const;
  // The file's dtype, or for an NF4 weight the dtype it was quantized from.
  torch::ScalarType dtype(const std::string& key) const;
  bool adapted(const std::string& key) const { return adapter_.by_weight_key.count(key) != 0; }
  bool quantized(const std::string& key) const { return nf4_.count(key) != 0; }
  // Adapted modules of another tower (vision, audio) whose weights this checkpoint does not hold.
  const std::vector<std::string>& ignored_adapter_modules() const { return ignored_; }
  // The tensor, a fresh copy owned by the caller: float32 when merged or dequantized, else in the
  // file's dtype.
  torch::Tensor tensor(const std::string& key) const;

 private:
  std::filesystem::path dir_;
  Gemma4Config config_;
  std::unique_ptr<HfCheckpointReader> reader_;
  std::string prefix_;
  PeftAdapterFiles adapter_;
  std::vector<std::string> keys_;
  std::map<std::string, std::vector<int64_t>> shapes_;
  std::map<std::string, torch::ScalarType> nf4_;  // weight key -> original dtype
  std::vector<std::string> ignored_;
};

// Writes `checkpoint` as a plain HF checkpoint folder `out_dir` (which must not exist; written
// atomically): floating tensors in `dtype`, sharded past `shard_bytes` with an index, config.json
// without its quantization_config, the tokenizer and generation files copied.
void write_merged_checkpoint(const MergedCheckpoint& checkpoint,
                             const std::filesystem::path& out_dir, torch::ScalarType dtype,
                             uint64_t shard_bytes = 5'000'000'000);

}  // namespace gemma
