#include "model/gemma4_config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/input_error.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using json = nlohmann::json;
using testing::bundled_config;

json tiny_text_config() {
  return json::parse(R"({
    "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "global_head_dim": 16,
    "num_global_key_value_heads": 1, "attention_k_eq_v": true,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]})");
}

std::string error_of(const std::string& text) {
  try {
    parse_gemma4_config(text, "config.json");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Gemma4Config, MultimodalAndTextOnlyFormsAgree) {
  const json text = tiny_text_config();
  const Gemma4Config flat = parse_gemma4_config(text.dump(), "flat");
  const Gemma4Config nested = parse_gemma4_config(json{{"text_config", text}}.dump(), "nested");
  ASSERT_EQ(flat.layers.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(flat.layers[i].head_dim, nested.layers[i].head_dim);
    EXPECT_EQ(flat.layers[i].num_kv_heads, nested.layers[i].num_kv_heads);
  }
  EXPECT_EQ(flat.layers[1].head_dim, 16);
  EXPECT_EQ(flat.layers[1].num_kv_heads, 1);  // num_global_key_value_heads, since K = V
  EXPECT_FALSE(flat.layers[1].has_v_proj);
  EXPECT_TRUE(flat.layers[0].has_v_proj);
}

TEST(Gemma4Config, PerLayerConfigFormMatchesFlatForm) {
  json text = tiny_text_config();
  text.erase("global_head_dim");
  text.erase("num_global_key_value_heads");
  // What transformers >= 5.15 writes: overrides for the full layers only.
  text["per_layer_config"] = {{"1", {{"head_dim", 16}, {"num_key_value_heads", 1}}},
                              {"3", {{"head_dim", 16}, {"num_key_value_heads", 1}}}};
  const Gemma4Config c = parse_gemma4_config(text.dump(), "per_layer");
  const Gemma4Config flat = parse_gemma4_config(tiny_text_config().dump(), "flat");
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(c.layers[i].head_dim, flat.layers[i].head_dim) << i;
    EXPECT_EQ(c.layers[i].num_kv_heads, flat.layers[i].num_kv_heads) << i;
  }
}

TEST(Gemma4Config, LayerTypesDefaultEverySixthFullAndLastForcedFull) {
  json text = tiny_text_config();
  text.erase("layer_types");
  text["num_hidden_layers"] = 8;
  const Gemma4Config c = parse_gemma4_config(text.dump(), "x");
  const std::vector<LayerType> expected = {
      LayerType::kSliding, LayerType::kSliding, LayerType::kSliding, LayerType::kSliding,
      LayerType::kSliding, LayerType::kFull,    LayerType::kSliding, LayerType::kFull};
  EXPECT_EQ(c.layer_types, expected);

  json forced = tiny_text_config();
  forced["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention",
                           "sliding_attention"};
  EXPECT_EQ(parse_gemma4_config(forced.dump(), "x").layer_types.back(), LayerType::kFull);
}

TEST(Gemma4Config, RopeParametersPerLayerType) {
  json text = tiny_text_config();
  text["rope_parameters"] = {
      {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 500.0}}},
      {"full_attention",
       {{"rope_type", "proportional"}, {"partial_rotary_factor", 0.5}, {"rope_theta", 7e5}}}};
  const Gemma4Config c = parse_gemma4_config(text.dump(), "x");
  EXPECT_EQ(c.rope_sliding.rope_theta, 500.0);
  EXPECT_EQ(c.rope_full.partial_rotary_factor, 0.5);
  EXPECT_EQ(c.rope_full.rope_theta, 7e5);
}

TEST(Gemma4Config, MissingRequiredFieldIsNamed) {
  json text = tiny_text_config();
  text.erase("hidden_size");
  const std::string msg = error_of(json{{"text_config", text}}.dump());
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"hidden_size\" is missing"), std::string::npos) << msg;
}

TEST(Gemma4Config, BadValuesAreNamed) {
  json text = tiny_text_config();
  text["num_hidden_layers"] = "four";
  EXPECT_NE(error_of(text.dump()).find("num_hidden_layers\": expected an integer"),
            std::string::npos);
  text = tiny_text_config();
  text["layer_types"] = {"sliding_attention", "local", "sliding_attention", "full_attention"};
  EXPECT_NE(error_of(text.dump()).find("unknown layer type \"local\""), std::string::npos);
  text = tiny_text_config();
  text["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(text.dump()).find("not a multiple"), std::string::npos);
  text = tiny_text_config();
  text["enable_moe_block"] = true;
  EXPECT_NE(error_of(text.dump()).find("num_experts"), std::string::npos);
  EXPECT_NE(error_of("{not json").find("not valid JSON"), std::string::npos);
  text = tiny_text_config();
  text["num_kv_shared_layers"] = 3;  // layer 3 (full) would read layer 0 (sliding): no full source
  EXPECT_NE(error_of(text.dump()).find("no earlier non-shared layer"), std::string::npos);
}

// §1.3: full-attention layer indices and KV-sharing sources of the released variants.
TEST(Gemma4Config, ReleasedVariantsGeometry) {
  const auto full_layers = [](const Gemma4Config& c) {
    std::vector<int> out;
    for (size_t i = 0; i < c.layers.size(); ++i) {
      if (c.layers[i].type == LayerType::kFull) out.push_back(static_cast<int>(i));
    }
    return out;
  };
  const Gemma4Config e2b = bundled_config("e2b");
  EXPECT_EQ(full_layers(e2b), (std::vector<int>{4, 9, 14, 19, 24, 29, 34}));
  EXPECT_EQ(e2b.first_kv_shared_layer(), 15);
  EXPECT_EQ(e2b.layers[15].kv_source, 13);
  EXPECT_EQ(e2b.layers[19].kv_source, 14);
  EXPECT_EQ(e2b.layers[34].kv_source, 14);
  EXPECT_EQ(e2b.layers[14].intermediate_size, 6144);
  EXPECT_EQ(e2b.layers[15].intermediate_size, 12288);

  const Gemma4Config e4b = bundled_config("e4b");
  EXPECT_EQ(full_layers(e4b), (std::vector<int>{5, 11, 17, 23, 29, 35, 41}));
  EXPECT_EQ(e4b.layers[24].kv_source, 22);
  EXPECT_EQ(e4b.layers[29].kv_source, 23);
  EXPECT_EQ(e4b.layers[41].kv_source, 23);

  const Gemma4Config b31 = bundled_config("31b");
  EXPECT_EQ(full_layers(b31).size(), 10u);
  EXPECT_EQ(b31.layers[5].num_kv_heads, 4);
  EXPECT_EQ(b31.layers[0].num_kv_heads, 16);

  const Gemma4Config a4b = bundled_config("26b-a4b");
  EXPECT_EQ(full_layers(a4b), (std::vector<int>{5, 11, 17, 23, 29}));
  EXPECT_EQ(a4b.layers[5].num_kv_heads, 2);
  EXPECT_EQ(a4b.sliding_window, 1024);
}

TEST(Gemma4Config, WrittenJsonParsesBackToTheSameGeometry) {
  for (const char* name : {"e2b", "e4b", "31b", "26b-a4b", "tiny-e2b", "tiny-31b", "tiny-moe"}) {
    const Gemma4Config c = bundled_config(name);
    for (bool text_only : {false, true}) {
      const Gemma4Config back =
          parse_gemma4_config(gemma4_config_to_json(c, text_only, "bfloat16"), name);
      ASSERT_EQ(back.layers.size(), c.layers.size()) << name;
      for (size_t i = 0; i < c.layers.size(); ++i) {
        EXPECT_EQ(back.layers[i].head_dim, c.layers[i].head_dim);
        EXPECT_EQ(back.layers[i].num_kv_heads, c.layers[i].num_kv_heads);
        EXPECT_EQ(back.layers[i].kv_source, c.layers[i].kv_source);
        EXPECT_EQ(back.layers[i].intermediate_size, c.layers[i].intermediate_size);
      }
      EXPECT_EQ(back.final_logit_softcapping, c.final_logit_softcapping);
    }
  }
}

}  // namespace
}  // namespace gemma
