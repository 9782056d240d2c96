// libFuzzer target: model.safetensors.index.json text -> HfCheckpointReader over a folder that
// holds two real shards, a file that is not one and a subfolder -> every listed tensor read. Any
// input must load or throw InputError.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string_view>

#include <torch/torch.h>

#include "io/hf_checkpoint.h"
#include "io/input_error.h"
#include "io/safetensors.h"
#include "tests/fuzz/fuzz_scratch_folder.h"

namespace {

// The checkpoint folder beside the index, made once: the shards the seed index names.
void make_checkpoint_folder() {
  const std::filesystem::path& dir = gemma_fuzz::scratch_folder();
  gemma::write_safetensors(dir / "model-00001-of-00002.safetensors",
                           {{"model.language_model.embed_tokens.weight",
                             torch::arange(12, torch::kFloat32).view({3, 4})},
                            {"model.language_model.layers.0.self_attn.q_proj.weight",
                             torch::ones({4, 4}, torch::kBFloat16)}},
                           {{"format", "pt"}});
  gemma::write_safetensors(dir / "model-00002-of-00002.safetensors",
                           {{"model.language_model.norm.weight", torch::zeros({4})},
                            {"model.language_model.layers.0.layer_scalar", torch::ones({1})}},
                           {{"format", "pt"}});
  gemma_fuzz::write_scratch_file("config.json", "{\"model_type\": \"gemma4\"}\n");
  std::filesystem::create_directory(dir / "subfolder");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool made = (make_checkpoint_folder(), true);
  (void)made;
  gemma_fuzz::write_scratch_file(gemma::kCheckpointIndexFile,
                                 std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    const gemma::HfCheckpointReader reader(gemma_fuzz::scratch_folder());
    for (const auto& key : reader.keys()) {
      (void)reader.entry(key);
      (void)reader.view(key).sum();
      reader.release(key);
    }
  } catch (const gemma::InputError&) {
  }
  return 0;
}
