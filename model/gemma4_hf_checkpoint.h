// Gemma 4 checkpoints in the Hugging Face layout (gemma4-architecture.md §3): the table of keys
// and shapes a config implies, streaming a checkpoint folder into a Gemma4ForCausalLM (either
// key prefix, sharded or not, tensor by tensor in the target dtype), and writing one.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "model/gemma4_config.h"
#include "model/gemma4_model.h"

namespace gemma {

constexpr const char* kMultimodalPrefix =
    "model.language_model.";                       // Gemma4ForConditionalGeneration
constexpr const char* kTextOnlyPrefix = "model.";  // Gemma4ForCausalLM

// One decoder tensor of the checkpoint table; `name` is relative to the prefix.
struct Gemma4TensorInfo {
  std::string name;
  std::vector<int64_t> shape;
  bool used = true;  // false: K/V weights of KV-shared layers, present in files but never read
};

// Every text-decoder tensor a released checkpoint of `config` holds (lm_head excluded: tied).
std::vector<Gemma4TensorInfo> gemma4_hf_checkpoint_layout(const Gemma4Config& config);

class HfCheckpointReader;
// A module or parameter name of Gemma4ForCausalLM ("model.layers.0...") as the checkpoint with
// decoder prefix `prefix` spells it ("model.language_model.layers.0..."); "lm_head..." is
// unchanged.
std::string hf_checkpoint_key(const std::string& module_name, const std::string& prefix);

// The decoder's key prefix in `reader` (multimodal or text-only form); InputError naming `dir`
// when neither is there.
std::string detect_gemma4_prefix(const HfCheckpointReader& reader,
                                 const std::filesystem::path& dir);

// What a checkpoint folder holds, counted against the config's tensor table: `info` prints it and
// the memory plan starts from it.
struct Gemma4CheckpointSummary {
  std::string prefix;
  bool sharded = false;
  bool lm_head_from_file = false;
  int64_t total_parameters = 0;  // the text decoder's, with an untied lm_head
  int64_t embedding_parameters = 0;
  int64_t ple_parameters = 0;
  int64_t nf4_weights = 0;  // Linear weights stored in bitsandbytes NF4
  size_t used_tensors = 0;  // file keys the decoder reads (NF4 parts counted one by one)
  size_t ignored_tensors = 0;
  // Ignored keys grouped by their first two components (vision/audio towers), and the unused
  // K/V of KV-shared layers as one group; with counts.
  std::map<std::string, int> ignored_groups;
};

// Counts `dir`'s tensors against `config`'s table, after check_gemma4_tensors: InputError naming
// the first missing or mis-shaped one.
Gemma4CheckpointSummary summarize_gemma4_checkpoint(const std::filesystem::path& dir,
                                                    const Gemma4Config& config);

enum class Nf4Base { kNever, kAsStored, kAlways };

// Checks that `reader` holds every tensor the text decoder reads, with its shape (dense or in
// bitsandbytes NF4), and that an untied lm_head, when there, is [vocab_size, hidden_size];
// InputError naming `dir`, the key and the expected shape otherwise.
void check_gemma4_tensors(const HfCheckpointReader& reader, const Gemma4Config& config,
                          const std::string& prefix, const std::filesystem::path& dir);

struct Gemma4LoadOptions {
  torch::ScalarType dtype = torch::kFloat32;  // compute dtype, and storage of dense tensors
  torch::Device device = torch::kCPU;
  // Which decoder weights are held as frozen NF4 (a QLoRA base): kAlways quantizes every decoder
  // Linear (a bitsandbytes 4-bit tensor is kept as stored, a dense one quantized tensor by tensor
  // while streaming); kAsStored keeps NF4 exactly the tensors the files hold in NF4; kNever
  // dequantizes them. Embeddings, norms, the PLE table and an untied lm_head always stay dense.
  Nf4Base nf4_base = Nf4Base::kNever;
  bool nf4_experts = true;  // with kAlways: the MoE experts as well
  bool nf4_router = false;  // with kAlways: the router's projection as well
  // Keep the PLE table (several GB, a row read per token) in host memory on a CUDA device; only
  // the rows of each batch cross (pinned, asynchronous). false: the table goes to the device.
  bool ple_on_host = true;
  // transformers' attn_implementation (gemma4_attention.h).
  AttentionImplementation attn_implementation = AttentionImplementation::kSdpa;
};

// The bytes held in NF4 by a model loaded with nf4_base (0 for a dense model).
int64_t nf4_base_bytes(Gemma4ForCausalLM& model);

struct Gemma4LoadReport {
  std::string prefix;                // the key prefix found in the files
  bool lm_head_from_file = false;    // else tied to embed_tokens
  std::vector<std::string> used;     // keys read
  std::vector<std::string> ignored;  // keys present but not part of the text decoder we run
};

struct LoadedGemma4 {
  Gemma4Config config;
  Gemma4ForCausalLM model{nullptr};
  Gemma4LoadReport report;
};

// Loads `dir` (config.json + safetensors), tensor by tensor into a model built in the target
// dtype. The PLE table, when the file already has the target dtype, stays in the read-only file
// mapping (frozen). Throws InputError naming the key and the expected and found shapes for a
// missing or mis-shaped tensor.
LoadedGemma4 load_gemma4(const std::filesystem::path& dir, const Gemma4LoadOptions& options = {});

struct Gemma4SaveOptions {
  bool text_only = false;  // `model.` prefix and a Gemma4ForCausalLM config
  torch::ScalarType dtype = torch::kBFloat16;
  uint64_t shard_bytes = 5'000'000'000;  // as transformers' default max_shard_size "5GB"
  uint64_t seed_for_unused = 0;          // values for the unused K/V tensors of shared layers
};

// Writes `model` as a new checkpoint folder `out_dir` (atomically: it must not exist yet), with
// config.json and generation_config.json.
void save_gemma4(Gemma4ForCausalLM& model, const std::filesystem::path& out_dir,
                 const Gemma4SaveOptions& options);

// Writes `in_dir` as a bitsandbytes NF4 (double-quant) checkpoint in `out_dir` (which must not
// exist): every decoder Linear weight in bitsandbytes' 4-bit keys, everything else as it was,
// `quantization_config` added to config.json, the other files (tokenizer, generation config)
// copied. Streams tensor by tensor.
void quantize_gemma4_checkpoint(const std::filesystem::path& in_dir,
                                const std::filesystem::path& out_dir,
                                uint64_t shard_bytes = 5'000'000'000);

// Fills every parameter and buffer with random values from `seed`: matrices ~ N(0, config
// initializer_range), vectors (norm weights, scales, layer_scalar) ~ 1 + N(0, 0.1). Never zeros.
void randomize_gemma4(Gemma4ForCausalLM& model, uint64_t seed);

}  // namespace gemma
