#include "peft/peft_adapter.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "io/input_error.h"
#include "io/safetensors.h"
#include "model/gemma4_hf_checkpoint.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::logits_of;
using testing::random_ids;
using testing::random_model;
using testing::ScratchDir;

void perturb(Gemma4ForCausalLM& model) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  for (auto& [name, p] : trainable_parameters(model)) p.add_(torch::randn(p.sizes(), gen) * 0.05);
}

std::string load_error(Gemma4ForCausalLM& model, const std::filesystem::path& dir) {
  try {
    load_peft_adapter(model, kMultimodalPrefix, dir);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(PeftAdapter, SavedAndLoadedAgainGivesIdenticalLogits) {
  for (bool dora : {false, true}) {
    SCOPED_TRACE(dora ? "DoRA" : "LoRA");
    ScratchDir dir;
    const Gemma4Config c = bundled_config("tiny-e2b");
    Gemma4ForCausalLM trained = random_model(c, 1);
    AdapterSpec spec;
    spec.lora = {4, 8.0, 0.0, false, dora};
    attach_adapters(trained, spec);
    perturb(trained);
    save_peft_adapter(trained, spec, kMultimodalPrefix, "base", dir / "adapter");
    const SafetensorsFile file(dir / "adapter" / "adapter_model.safetensors");
    EXPECT_TRUE(file.contains(
        "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"));
    EXPECT_EQ(
        file.contains(
            "base_model.model.model.language_model.layers.0.mlp.up_proj.lora_magnitude_vector"),
        dora);

    Gemma4ForCausalLM fresh = random_model(c, 1);
    const AdapterSpec loaded = load_peft_adapter(fresh, kMultimodalPrefix, dir / "adapter");
    EXPECT_EQ(loaded.lora.use_dora, dora);
    const torch::Tensor ids = random_ids(1, 10, c.vocab_size, 2);
    EXPECT_TRUE(torch::equal(logits_of(fresh, ids), logits_of(trained, ids)));
  }
}

TEST(PeftAdapter, WrongAdaptersAreClearErrors) {
  ScratchDir dir;
  const Gemma4Config c = bundled_config("tiny-e2b");
  Gemma4ForCausalLM trained = random_model(c, 1);
  AdapterSpec spec;
  attach_adapters(trained, spec);
  save_peft_adapter(trained, spec, kMultimodalPrefix, "base", dir / "adapter");
  EXPECT_THROW(save_peft_adapter(trained, spec, kMultimodalPrefix, "base", dir / "adapter"),
               InputError);

  // A rank that does not match the stored tensors.
  std::filesystem::copy(dir / "adapter", dir / "rank");
  nlohmann::json config =
      nlohmann::json::parse(read_text_file(dir / "rank" / "adapter_config.json"));
  config["r"] = 16;
  std::ofstream(dir / "rank" / "adapter_config.json") << config.dump();
  Gemma4ForCausalLM a = random_model(c, 1);
  EXPECT_NE(load_error(a, dir / "rank").find("rank mismatch"), std::string::npos);

  // An adapter made for another base: tiny-31b has k_proj on layers 4-5 (no KV sharing), this
  // adapter has none there.
  Gemma4ForCausalLM other = random_model(bundled_config("tiny-31b"), 1);
  const std::string other_error = load_error(other, dir / "adapter");
  EXPECT_NE(other_error.find("adapter_model.safetensors"), std::string::npos) << other_error;
  // ... and keys for modules this model lacks are refused, not skipped.
  {
    const SafetensorsFile file(dir / "adapter" / "adapter_model.safetensors");
    std::vector<std::pair<std::string, torch::Tensor>> extra;
    for (const auto& key : file.names()) extra.emplace_back(key, file.view(key).clone());
    extra.emplace_back(
        "base_model.model.model.language_model.layers.9.self_attn.q_proj.lora_A.weight",
        torch::zeros({8, 64}));
    std::filesystem::copy(dir / "adapter", dir / "extra");
    write_safetensors(dir / "extra" / "adapter_model.safetensors", extra);
  }
  Gemma4ForCausalLM b = random_model(c, 1);
  EXPECT_NE(load_error(b, dir / "extra").find("matches no adapted module"), std::string::npos);

  EXPECT_NE(load_error(a, dir / "missing").find("cannot open"), std::string::npos);
}

}  // namespace
}  // namespace gemma
