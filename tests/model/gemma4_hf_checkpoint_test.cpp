#include "model/gemma4_hf_checkpoint.h"

#include <gtest/gtest.h>

#include <map>

#include "io/hf_checkpoint.h"
#include "io/input_error.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::logits_of;
using testing::random_ids;
using testing::random_model;
using testing::relative_error;
using testing::ScratchDir;
using Shape = std::vector<int64_t>;

std::map<std::string, Gemma4TensorInfo> layout_of(const std::string& name) {
  std::map<std::string, Gemma4TensorInfo> out;
  for (const auto& info : gemma4_hf_checkpoint_layout(bundled_config(name))) out[info.name] = info;
  return out;
}

// The shapes of gemma4-architecture.md §3.1-§3.3, written out by hand per variant.
struct VariantTable {
  const char* name;
  int64_t H, L, sliding_layer, full_layer;
  Shape q_sliding, q_full, k_sliding, k_full, o_sliding, o_full;
  bool v_on_full;
  std::map<int, Shape> gate_up;  // layer -> [I, H]
  Shape ple_table, ple_projection;
  Shape experts_gate_up, experts_down;
};

const VariantTable kTables[] = {
    {"e2b",
     1536,
     35,
     0,
     4,
     {2048, 1536},
     {4096, 1536},
     {256, 1536},
     {512, 1536},
     {1536, 2048},
     {1536, 4096},
     true,
     {{0, {6144, 1536}}, {14, {6144, 1536}}, {15, {12288, 1536}}, {34, {12288, 1536}}},
     {262144, 8960},
     {8960, 1536},
     {},
     {}},
    {"e4b",
     2560,
     42,
     0,
     5,
     {2048, 2560},
     {4096, 2560},
     {512, 2560},
     {1024, 2560},
     {2560, 2048},
     {2560, 4096},
     true,
     {{0, {10240, 2560}}, {41, {10240, 2560}}},
     {262144, 10752},
     {10752, 2560},
     {},
     {}},
    {"31b",
     5376,
     60,
     0,
     5,
     {8192, 5376},
     {16384, 5376},
     {4096, 5376},
     {2048, 5376},
     {5376, 8192},
     {5376, 16384},
     false,
     {{0, {21504, 5376}}, {59, {21504, 5376}}},
     {},
     {},
     {},
     {}},
    {"26b-a4b",
     2816,
     30,
     0,
     5,
     {4096, 2816},
     {8192, 2816},
     {2048, 2816},
     {1024, 2816},
     {2816, 4096},
     {2816, 8192},
     false,
     {{0, {2112, 2816}}, {29, {2112, 2816}}},
     {},
     {},
     {128, 1408, 2816},
     {128, 2816, 704}},
};

TEST(Gemma4CheckpointLayout, ReleasedVariantsMatchTheSpecTables) {
  for (const VariantTable& t : kTables) {
    SCOPED_TRACE(t.name);
    auto layout = layout_of(t.name);
    const auto shape = [&](const std::string& key) -> Shape {
      const auto it = layout.find(key);
      if (it == layout.end()) return {-1};
      return it->second.shape;
    };
    const std::string s = "layers." + std::to_string(t.sliding_layer) + ".self_attn.";
    const std::string f = "layers." + std::to_string(t.full_layer) + ".self_attn.";
    EXPECT_EQ(shape("embed_tokens.weight"), (Shape{262144, t.H}));
    EXPECT_EQ(shape("norm.weight"), (Shape{t.H}));
    EXPECT_EQ(shape(s + "q_proj.weight"), t.q_sliding);
    EXPECT_EQ(shape(f + "q_proj.weight"), t.q_full);
    EXPECT_EQ(shape(s + "k_proj.weight"), t.k_sliding);
    EXPECT_EQ(shape(f + "k_proj.weight"), t.k_full);
    EXPECT_EQ(shape(s + "v_proj.weight"), t.k_sliding);
    EXPECT_EQ(shape(f + "v_proj.weight"), t.v_on_full ? t.k_full : Shape{-1});
    EXPECT_EQ(shape(s + "o_proj.weight"), t.o_sliding);
    EXPECT_EQ(shape(f + "o_proj.weight"), t.o_full);
    EXPECT_EQ(shape(s + "q_norm.weight"), (Shape{256}));
    EXPECT_EQ(shape(f + "k_norm.weight"), (Shape{512}));
    for (const auto& [layer, gu] : t.gate_up) {
      const std::string m = "layers." + std::to_string(layer) + ".mlp.";
      EXPECT_EQ(shape(m + "gate_proj.weight"), gu);
      EXPECT_EQ(shape(m + "up_proj.weight"), gu);
      EXPECT_EQ(shape(m + "down_proj.weight"), (Shape{gu[1], gu[0]}));
    }
    EXPECT_EQ(shape("layers.0.layer_scalar"), (Shape{1}));
    if (!t.ple_table.empty()) {
      EXPECT_EQ(shape("embed_tokens_per_layer.weight"), t.ple_table);
      EXPECT_EQ(shape("per_layer_model_projection.weight"), t.ple_projection);
      EXPECT_EQ(shape("per_layer_projection_norm.weight"), (Shape{256}));
      EXPECT_EQ(shape("layers.3.per_layer_input_gate.weight"), (Shape{256, t.H}));
      EXPECT_EQ(shape("layers.3.per_layer_projection.weight"), (Shape{t.H, 256}));
      EXPECT_EQ(shape("layers.3.post_per_layer_input_norm.weight"), (Shape{t.H}));
    } else {
      EXPECT_EQ(shape("embed_tokens_per_layer.weight"), (Shape{-1}));
    }
    if (!t.experts_gate_up.empty()) {
      EXPECT_EQ(shape("layers.7.experts.gate_up_proj"), t.experts_gate_up);
      EXPECT_EQ(shape("layers.7.experts.down_proj"), t.experts_down);
      EXPECT_EQ(shape("layers.7.router.proj.weight"), (Shape{128, t.H}));
      EXPECT_EQ(shape("layers.7.router.scale"), (Shape{t.H}));
      EXPECT_EQ(shape("layers.7.router.per_expert_scale"), (Shape{128}));
      for (const char* n : {"pre_feedforward_layernorm_2", "post_feedforward_layernorm_1",
                            "post_feedforward_layernorm_2"}) {
        EXPECT_EQ(shape(std::string("layers.7.") + n + ".weight"), (Shape{t.H}));
      }
    }
    // Tensor count per layer: 4 norms, layer_scalar, q/k/o + q/k norms, v where present, 3 MLP,
    // 3 PLE, 8 MoE; plus embed_tokens, norm and the 3 global PLE tensors.
    int64_t full_layers = 0;
    for (const auto& spec : bundled_config(t.name).layers)
      full_layers += spec.type == LayerType::kFull;
    int64_t expected = 2 + t.L * (4 + 1 + 5 + 3) + (t.L - (t.v_on_full ? 0 : full_layers));
    if (!t.ple_table.empty()) expected += 3 + 3 * t.L;
    if (!t.experts_gate_up.empty()) expected += 8 * t.L;
    EXPECT_EQ(static_cast<int64_t>(layout.size()), expected);
  }
}

TEST(Gemma4CheckpointLayout, SharedLayersKvWeightsAreInTheFileButUnused) {
  const auto layout = layout_of("e2b");
  EXPECT_FALSE(layout.at("layers.15.self_attn.k_proj.weight").used);
  EXPECT_FALSE(layout.at("layers.34.self_attn.v_proj.weight").used);
  EXPECT_FALSE(layout.at("layers.20.self_attn.k_norm.weight").used);
  EXPECT_TRUE(layout.at("layers.14.self_attn.k_proj.weight").used);
  EXPECT_TRUE(layout.at("layers.15.self_attn.q_proj.weight").used);
}

// The model registers exactly the used tensors of the layout, under the same names and shapes.
TEST(Gemma4CheckpointLayout, ModelStateIsTheUsedLayout) {
  for (const char* name : {"tiny-e2b", "tiny-31b", "tiny-moe"}) {
    const Gemma4Config c = bundled_config(name);
    Gemma4ForCausalLM model = random_model(c, 1);
    std::map<std::string, Shape> state;
    for (const auto& p : model->named_parameters())
      state[p.key().substr(6)] = p.value().sizes().vec();
    for (const auto& b : model->named_buffers()) state[b.key().substr(6)] = b.value().sizes().vec();
    std::map<std::string, Shape> used;
    for (const auto& info : gemma4_hf_checkpoint_layout(c)) {
      if (info.used) used[info.name] = info.shape;
    }
    EXPECT_EQ(state, used) << name;
  }
}

TEST(Gemma4Checkpoint, EveryPrefixAndShardingGivesIdenticalLogits) {
  for (const char* name : {"tiny-e2b", "tiny-31b", "tiny-moe"}) {
    SCOPED_TRACE(name);
    ScratchDir dir;
    const Gemma4Config c = bundled_config(name);
    Gemma4ForCausalLM model = random_model(c, 11);
    const torch::Tensor ids = random_ids(2, 9, c.vocab_size, 5);
    const torch::Tensor expected = logits_of(model, ids);
    int variant = 0;
    for (bool text_only : {false, true}) {
      for (uint64_t shard : {uint64_t{1} << 40, uint64_t{200'000}}) {
        const auto out = dir / ("ckpt" + std::to_string(variant++));
        Gemma4SaveOptions save;
        save.text_only = text_only;
        save.dtype = torch::kFloat32;
        save.shard_bytes = shard;
        save_gemma4(model, out, save);
        LoadedGemma4 loaded = load_gemma4(out);
        EXPECT_EQ(loaded.report.prefix, text_only ? kTextOnlyPrefix : kMultimodalPrefix);
        EXPECT_EQ(HfCheckpointReader(out).sharded(), shard < 1'000'000);
        EXPECT_TRUE(torch::equal(logits_of(loaded.model, ids), expected));
      }
    }
  }
}

TEST(Gemma4Checkpoint, LoadsIntoBf16WithTheSameLogitsToBf16Precision) {
  ScratchDir dir;
  const Gemma4Config c = bundled_config("tiny-e2b");
  Gemma4ForCausalLM model = random_model(c, 4);
  Gemma4SaveOptions save;
  save.dtype = torch::kFloat32;
  save_gemma4(model, dir / "m", save);
  LoadedGemma4 bf16 = load_gemma4(dir / "m", {torch::kBFloat16, torch::kCPU});
  EXPECT_EQ(bf16.model->dtype(), torch::kBFloat16);
  const torch::Tensor ids = random_ids(1, 12, c.vocab_size, 3);
  EXPECT_LT(relative_error(logits_of(bf16.model, ids), logits_of(model, ids)), 0.1);
}

// Every tensor of a checkpoint folder, copied out of the mapping (so the file can be rewritten).
std::vector<std::pair<std::string, torch::Tensor>> cloned_tensors(
    const std::filesystem::path& dir) {
  HfCheckpointReader reader(dir);
  std::vector<std::pair<std::string, torch::Tensor>> all;
  for (const auto& key : reader.keys()) all.emplace_back(key, reader.view(key).clone());
  return all;
}

std::string load_error(const std::filesystem::path& dir) {
  try {
    load_gemma4(dir);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Gemma4Checkpoint, MissingOrMisShapedTensorIsNamed) {
  ScratchDir dir;
  const Gemma4Config c = bundled_config("tiny-31b");
  Gemma4ForCausalLM model = random_model(c, 2);
  Gemma4SaveOptions save;
  save.dtype = torch::kFloat32;
  save.text_only = true;
  save_gemma4(model, dir / "m", save);
  // Rewrite the file without one tensor, and with one of the wrong shape.
  HfCheckpointReader reader(dir / "m");
  std::vector<std::pair<std::string, torch::Tensor>> missing, misshaped;
  for (const auto& key : reader.keys()) {
    const torch::Tensor t = reader.view(key).clone();
    if (key != "model.layers.2.self_attn.o_proj.weight") missing.emplace_back(key, t);
    misshaped.emplace_back(
        key, key == "model.layers.1.mlp.up_proj.weight" ? t.narrow(0, 0, 5).clone() : t);
  }
  write_safetensors(dir / "m" / "model.safetensors", missing);
  EXPECT_EQ(
      load_error(dir / "m"),
      (dir / "m").string() +
          ": missing tensor \"model.layers.2.self_attn.o_proj.weight\" (expected shape [64, 128])");
  write_safetensors(dir / "m" / "model.safetensors", misshaped);
  EXPECT_EQ(
      load_error(dir / "m"),
      (dir / "m").string() +
          ": tensor \"model.layers.1.mlp.up_proj.weight\" has shape [5, 64], expected [128, 64]");
}

TEST(Gemma4Checkpoint, SharedLayersKvWeightsAreOptionalAndTowersIgnored) {
  ScratchDir dir;
  const Gemma4Config c = bundled_config("tiny-e2b");
  Gemma4ForCausalLM model = random_model(c, 8);
  Gemma4SaveOptions save;
  save.dtype = torch::kFloat32;
  save_gemma4(model, dir / "m", save);
  HfCheckpointReader reader(dir / "m");
  std::vector<std::pair<std::string, torch::Tensor>> kept;
  for (const auto& key : reader.keys()) {
    if (key.find("layers.4.self_attn.k_") == std::string::npos)
      kept.emplace_back(key, reader.view(key).clone());
  }
  kept.emplace_back("model.vision_tower.encoder.weight", torch::randn({3, 3}));
  write_safetensors(dir / "m" / "model.safetensors", kept);
  LoadedGemma4 loaded = load_gemma4(dir / "m");
  const torch::Tensor ids = random_ids(1, 10, c.vocab_size, 9);
  EXPECT_TRUE(torch::equal(logits_of(loaded.model, ids), logits_of(model, ids)));
  EXPECT_NE(std::find(loaded.report.ignored.begin(), loaded.report.ignored.end(),
                      "model.vision_tower.encoder.weight"),
            loaded.report.ignored.end());
}

TEST(Gemma4Checkpoint, UntiedLmHeadIsUsedWhenPresent) {
  ScratchDir dir;
  const Gemma4Config c = bundled_config("tiny-31b");
  Gemma4ForCausalLM model = random_model(c, 8);
  Gemma4SaveOptions save;
  save.dtype = torch::kFloat32;
  save_gemma4(model, dir / "m", save);
  std::vector<std::pair<std::string, torch::Tensor>> all = cloned_tensors(dir / "m");
  all.emplace_back("lm_head.weight", torch::randn({c.vocab_size, c.hidden_size}));
  write_safetensors(dir / "m" / "model.safetensors", all);
  LoadedGemma4 loaded = load_gemma4(dir / "m");
  ASSERT_TRUE(loaded.report.lm_head_from_file);
  const torch::Tensor ids = random_ids(1, 6, c.vocab_size, 9);
  EXPECT_FALSE(torch::allclose(logits_of(loaded.model, ids), logits_of(model, ids)));
}

std::string summary_error(const std::filesystem::path& dir, const Gemma4Config& c) {
  try {
    summarize_gemma4_checkpoint(dir, c);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

// `info` counts from the summary: a tensor whose shape disagrees with config.json is an error
// there, as when loading, not a count computed from the wrong numbers.
TEST(Gemma4Checkpoint, SummaryChecksShapesAgainstTheConfig) {
  ScratchDir dir;
  const Gemma4Config c = bundled_config("tiny-31b");
  Gemma4ForCausalLM model = random_model(c, 3);
  Gemma4SaveOptions save;
  save.dtype = torch::kFloat32;
  save.text_only = true;
  save_gemma4(model, dir / "m", save);
  const std::vector<std::pair<std::string, torch::Tensor>> all = cloned_tensors(dir / "m");
  int64_t expected_total = 0;
  for (const Gemma4TensorInfo& info : gemma4_hf_checkpoint_layout(c)) {
    int64_t n = 1;
    for (int64_t d : info.shape) n *= d;
    if (info.used) expected_total += n;
  }
  const Gemma4CheckpointSummary plain = summarize_gemma4_checkpoint(dir / "m", c);
  EXPECT_EQ(plain.total_parameters, expected_total);
  EXPECT_EQ(plain.embedding_parameters, c.vocab_size * c.hidden_size);

  std::vector<std::pair<std::string, torch::Tensor>> misshaped = all;
  for (auto& [key, t] : misshaped) {
    if (key == "model.layers.1.mlp.up_proj.weight") t = t.narrow(0, 0, 5).clone();
  }
  write_safetensors(dir / "m" / "model.safetensors", misshaped);
  EXPECT_EQ(summary_error(dir / "m", c),
            (dir / "m").string() +
                ": tensor \"model.layers.1.mlp.up_proj.weight\" has shape [5, 64], expected "
                "[128, 64]");

  // An untied lm_head is counted from the config once its shape is checked.
  std::vector<std::pair<std::string, torch::Tensor>> head = all;
  head.emplace_back("lm_head.weight", torch::randn({c.vocab_size, c.hidden_size + 1}));
  write_safetensors(dir / "m" / "model.safetensors", head);
  const std::string want = (dir / "m").string() + ": tensor \"lm_head.weight\" has shape [" +
                           std::to_string(c.vocab_size) + ", " + std::to_string(c.hidden_size + 1) +
                           "], expected [" + std::to_string(c.vocab_size) + ", " +
                           std::to_string(c.hidden_size) + "]";
  EXPECT_EQ(summary_error(dir / "m", c), want);
  EXPECT_EQ(load_error(dir / "m"), want);
  head.back().second = torch::randn({c.vocab_size, c.hidden_size});
  write_safetensors(dir / "m" / "model.safetensors", head);
  const Gemma4CheckpointSummary untied = summarize_gemma4_checkpoint(dir / "m", c);
  EXPECT_TRUE(untied.lm_head_from_file);
  EXPECT_EQ(untied.total_parameters, expected_total + c.vocab_size * c.hidden_size);
}

TEST(Gemma4Checkpoint, ExistingOutputFolderIsRefusedAndUntouched) {
  ScratchDir dir;
  Gemma4ForCausalLM model = random_model(bundled_config("tiny-31b"), 8);
  std::filesystem::create_directories(dir / "out");
  EXPECT_THROW(save_gemma4(model, dir / "out", {}), InputError);
  EXPECT_TRUE(std::filesystem::is_empty(dir / "out"));
}

}  // namespace
}  // namespace gemma
