#include "peft/peft_adapter.h"

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <limits>
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

// adapter_config.json as PEFT 0.21.2 saves LoraConfig(r=4, lora_alpha=16, target_modules=[q_proj,
// v_proj], task_type="CAUSAL_LM"): every LoraConfig key at its default.
constexpr const char* kPeftSavedConfig = R"({"alora_invocation_tokens": null, "alpha_pattern": {},
  "arrow_config": null, "auto_mapping": null, "base_model_name_or_path": null, "bias": "none",
  "corda_config": null, "ensure_weight_tying": false, "eva_config": null, "exclude_modules": null,
  "fan_in_fan_out": false, "inference_mode": false, "init_lora_weights": true, "kasa_config": null,
  "layer_replication": null, "layers_pattern": null, "layers_to_transform": null,
  "loftq_config": {}, "lora_alpha": 16, "lora_bias": false, "lora_dropout": 0.0,
  "lora_ga_config": null, "megatron_config": null, "megatron_core": "megatron.core",
  "modules_to_save": null, "monteclora_config": null, "peft_type": "LORA",
  "peft_version": "0.21.2", "qalora_group_size": 16, "r": 4, "rank_pattern": {},
  "revision": null, "target_modules": ["q_proj", "v_proj"], "target_parameters": null,
  "task_type": "CAUSAL_LM", "trainable_token_indices": null, "use_bdlora": null,
  "use_dora": false, "use_qalora": false, "use_rslora": false, "velora_config": null})";

// A folder `name` holding only adapter_config.json: kPeftSavedConfig with `edit` applied.
std::filesystem::path config_folder(const ScratchDir& dir, const std::string& name,
                                    const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json config = nlohmann::json::parse(kPeftSavedConfig);
  edit(config);
  std::filesystem::path folder = dir / name;
  std::filesystem::create_directories(folder);
  std::ofstream(folder / "adapter_config.json") << config.dump();
  return folder;
}

std::string config_error(const std::filesystem::path& folder) {
  try {
    read_peft_adapter_config(folder);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(PeftAdapterConfig, EveryKeyAtItsDefaultLoads) {
  ScratchDir dir;
  const AdapterSpec spec = read_peft_adapter_config(config_folder(dir, "peft", [](auto&) {}));
  EXPECT_EQ(spec.lora.r, 4);
  EXPECT_EQ(spec.lora.alpha, 16.0);
  EXPECT_EQ(spec.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_TRUE(spec.target_regex.empty());
  // PEFT's defaults for what is missing: r 8, lora_alpha 8 (not r).
  const AdapterSpec bare = read_peft_adapter_config(config_folder(dir, "bare", [](auto& c) {
    c = {{"peft_type", "LORA"}, {"r", 4}, {"target_modules", {"q_proj"}}};
  }));
  EXPECT_EQ(bare.lora.r, 4);
  EXPECT_EQ(bare.lora.alpha, 8.0);
  // Empty values of the refused keys mean what absent does; so does an unknown key set to null.
  const AdapterSpec empty = read_peft_adapter_config(config_folder(dir, "empty", [](auto& c) {
    c["layers_to_transform"] = nlohmann::json::array();
    c["modules_to_save"] = nlohmann::json::array();
    c["rank_pattern"] = nullptr;
    c["exclude_modules"] = "";
    c["a_key_of_a_later_peft"] = nullptr;
  }));
  EXPECT_EQ(empty.lora.r, 4);
  // What PEFT reads only for fresh weights, and fan_in_fan_out (off on nn.Linear in PEFT).
  const AdapterSpec init = read_peft_adapter_config(config_folder(dir, "init", [](auto& c) {
    c["init_lora_weights"] = "gaussian";
    c["eva_config"] = {{"rho", 2.0}};
    c["fan_in_fan_out"] = true;
    c["use_rslora"] = true;
    c["use_dora"] = true;
  }));
  EXPECT_TRUE(init.lora.use_rslora);
  EXPECT_TRUE(init.lora.use_dora);
}

TEST(PeftAdapterConfig, UnsupportedKeysAreRefusedByName) {
  ScratchDir dir;
  using nlohmann::json;
  const struct {
    const char* key;
    json value;
    const char* set_to;
  } cases[] = {
      {"layers_to_transform", json::array({0}), "null"},
      {"layers_to_transform", 0, "null"},  // an int is one layer index
      {"layers_pattern", "layers", "null"},
      {"exclude_modules", json::array({"v_proj"}), "null"},
      {"exclude_modules", ".*v_proj", "null"},
      {"modules_to_save", json::array({"lm_head"}), "null"},
      {"rank_pattern", {{"q_proj", 8}}, "null"},
      {"alpha_pattern", {{"q_proj", 32}}, "null"},
      {"target_parameters", json::array({"experts.down_proj"}), "null"},
      {"layer_replication", json::array({json::array({0, 2})}), "null"},
      {"megatron_config", {{"tensor_model_parallel_size", 2}}, "null"},
      {"lora_bias", true, "false"},
      {"use_qalora", true, "false"},
      {"ensure_weight_tying", true, "false"},
      // PEFT tests these with `is not None`: an empty value turns them on too.
      {"trainable_token_indices", json::array(), "null"},
      {"alora_invocation_tokens", json::array({1, 2}), "null"},
      {"velora_config", json::object(), "null"},
      {"kasa_config", json::object(), "null"},
      {"arrow_config", json::object(), "null"},
      {"use_bdlora", json::object(), "null"},
      {"monteclora_config", json::object(), "null"},
  };
  int n = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.key) + " = " + c.value.dump());
    const std::filesystem::path folder = config_folder(
        dir, "c" + std::to_string(n++), [&](json& config) { config[c.key] = c.value; });
    const std::string error = config_error(folder);
    const std::string head =
        (folder / "adapter_config.json").string() + ": key \"" + c.key + "\" is not supported (";
    EXPECT_EQ(error.rfind(head, 0), 0u) << error;
    EXPECT_NE(error.find(std::string("); remove it or set it to ") + c.set_to), std::string::npos)
        << error;
  }
  EXPECT_EQ(
      config_error(config_folder(dir, "layers", [](json& c) { c["layers_to_transform"] = {0}; })),
      (dir / "layers" / "adapter_config.json").string() +
          ": key \"layers_to_transform\" is not supported (gemma-train applies the adapter "
          "to every matching layer); remove it or set it to null");
  // A key PEFT 0.21.2 does not know, with a value that may turn something on.
  const std::string unknown =
      config_error(config_folder(dir, "unknown", [](json& c) { c["lora_shift"] = 0.5; }));
  EXPECT_NE(unknown.find("key \"lora_shift\" (0.5) is not a PEFT 0.21.2 LoraConfig key"),
            std::string::npos)
      << unknown;
}

// PEFT runs these initialisations again when it loads an adapter, and they rewrite the base
// weights (checked with peft 0.21.2: init_lora_weights="olora" saved, then
// PeftModel.from_pretrained onto the same base changes base_layer.weight; "gaussian" and
// "orthogonal" leave it alone).
TEST(PeftAdapterConfig, InitSchemesThatRewriteTheBaseAreRefused) {
  ScratchDir dir;
  int n = 0;
  for (const char* scheme : {"pissa", "pissa_niter_4", "olora", "corda", "loftq"}) {
    SCOPED_TRACE(scheme);
    const std::string error = config_error(config_folder(
        dir, "i" + std::to_string(n++), [&](auto& c) { c["init_lora_weights"] = scheme; }));
    EXPECT_NE(error.find("key \"init_lora_weights\" \"" + std::string(scheme) +
                         "\" is not supported (PEFT runs this initialisation again"),
              std::string::npos)
        << error;
  }
  EXPECT_NE(
      config_error(config_folder(dir, "mica", [](auto& c) { c["init_lora_weights"] = "mica"; }))
          .find("lora_B frozen"),
      std::string::npos);
  EXPECT_NE(
      config_error(config_folder(dir, "typo", [](auto& c) { c["init_lora_weights"] = "gausian"; }))
          .find("not a scheme PEFT 0.21.2 knows"),
      std::string::npos);
  for (const char* scheme : {"gaussian", "eva", "orthogonal", "lora_ga"}) {
    EXPECT_EQ(config_error(config_folder(dir, "i" + std::to_string(n++),
                                         [&](auto& c) { c["init_lora_weights"] = scheme; })),
              "")
        << scheme;
  }
}

TEST(PeftAdapterConfig, RankAlphaDropoutAndTargetsAreChecked) {
  ScratchDir dir;
  using nlohmann::json;
  const struct {
    const char* key;
    json value;
    const char* needle;
  } cases[] = {
      {"r", 0, "key \"r\" must be an integer from 1 to 65536, found 0"},
      {"r", 65537, "found 65537"},
      {"r", 8.5, "found 8.5"},
      {"r", "8", "found \"8\""},
      {"lora_alpha", "16", "key \"lora_alpha\" must be a finite number"},
      {"lora_alpha", true, "key \"lora_alpha\" must be a finite number"},
      {"lora_dropout", 1.5, "key \"lora_dropout\" must be a probability from 0 to 1"},
      {"lora_dropout", -0.1, "key \"lora_dropout\" must be a probability"},
      {"use_dora", "yes", "key \"use_dora\" must be true or false"},
      {"bias", "all", "key \"bias\" is \"all\", which is not supported"},
      {"target_modules", nullptr, "key \"target_modules\" is null"},
      {"target_modules", "", "key \"target_modules\" is an empty regular expression"},
      {"target_modules", "ALL-LINEAR", "which PEFT expands to module names"},
      {"target_modules", json::array({1}), "1 is not a module name"},
      {"target_modules", R"((q|v)_proj\.\1)", "key \"target_modules\": regular expression"},
      {"target_modules", "q_proj(?!x)", "invalid perl operator"},
      {"peft_type", "LOHA", "peft_type is not \"LORA\""},
  };
  int n = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.key) + " = " + c.value.dump());
    const std::filesystem::path folder = config_folder(
        dir, "c" + std::to_string(n++), [&](json& config) { config[c.key] = c.value; });
    const std::string error = config_error(folder);
    EXPECT_EQ(error.rfind((folder / "adapter_config.json").string() + ": ", 0), 0u) << error;
    EXPECT_NE(error.find(c.needle), std::string::npos) << error;
  }
  EXPECT_NE(
      config_error(config_folder(dir, "no-targets", [](json& c) { c.erase("target_modules"); }))
          .find("key \"target_modules\" is missing"),
      std::string::npos);
  // An infinite lora_alpha cannot get through: nlohmann refuses 1e999 (and NaN is no JSON).
  std::filesystem::create_directories(dir / "inf");
  std::ofstream(dir / "inf" / "adapter_config.json")
      << R"({"peft_type": "LORA", "r": 4, "lora_alpha": 1e999, "target_modules": ["q_proj"]})";
  EXPECT_NE(config_error(dir / "inf").find("not valid JSON: number overflow parsing '1e999'"),
            std::string::npos)
      << config_error(dir / "inf");
  // Nesting is bounded before nlohmann recurses into it.
  std::filesystem::create_directories(dir / "deep");
  std::ofstream(dir / "deep" / "adapter_config.json")
      << R"({"peft_type": "LORA", "x": )" + std::string(100000, '[');
  EXPECT_NE(config_error(dir / "deep").find("nested deeper than 128"), std::string::npos);
  // A catastrophic pattern compiles (RE2) and matches nothing here, at once.
  const AdapterSpec slow = read_peft_adapter_config(
      config_folder(dir, "slow", [](json& c) { c["target_modules"] = "([a-z_.0-9]+)+x"; }));
  EXPECT_EQ(slow.target_regex, "([a-z_.0-9]+)+x");
  EXPECT_TRUE(slow.target_modules.empty());
  Gemma4ForCausalLM model = random_model(bundled_config("tiny-e2b"), 1);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(attach_adapters(model, slow), InputError);  // no module matches
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1.0);
}

TEST(PeftAdapter, NonFiniteWeightsAreRefusedByName) {
  ScratchDir dir;
  const Gemma4Config c = bundled_config("tiny-e2b");
  Gemma4ForCausalLM trained = random_model(c, 1);
  AdapterSpec spec;
  attach_adapters(trained, spec);
  save_peft_adapter(trained, spec, kMultimodalPrefix, "base", dir / "adapter");
  const std::string bad_key =
      "base_model.model.model.language_model.layers.1.mlp.down_proj.lora_B.weight";
  int n = 0;
  for (const float bad :
       {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
    const std::filesystem::path folder = dir / ("bad" + std::to_string(n++));
    std::filesystem::copy(dir / "adapter", folder);
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    const SafetensorsFile file(dir / "adapter" / "adapter_model.safetensors");
    for (const auto& key : file.names()) {
      torch::Tensor t = file.view(key).clone();
      if (key == bad_key) t.view({-1})[3] = bad;
      tensors.emplace_back(key, t);
    }
    write_safetensors(folder / "adapter_model.safetensors", tensors);
    Gemma4ForCausalLM model = random_model(c, 1);
    EXPECT_EQ(load_error(model, folder), (folder / "adapter_model.safetensors").string() +
                                             ": tensor \"" + bad_key + "\" holds NaN or Inf");
  }
}

}  // namespace
}  // namespace gemma
