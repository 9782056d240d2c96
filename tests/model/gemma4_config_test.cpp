#include "model/gemma4_config.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <limits>
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

// The error for `text`, which must come fast: every bound is checked before anything is sized
// from the config (an allocation of 2^40 would throw bad_alloc, not InputError, or take long).
std::string fast_error_of(const json& text) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string msg = error_of(text.dump());
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0);
  return msg;
}

// `config` after finalize(), or the InputError it threw: for values JSON cannot spell (NaN).
std::string finalize_error_of(Gemma4Config config) {
  try {
    config.finalize("cfg");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(Gemma4Config, HugeDimensionsAreNamedBeforeAnythingIsSized) {
  json text = tiny_text_config();
  text["hidden_size"] = int64_t{1} << 40;
  EXPECT_EQ(fast_error_of(text),
            "config.json: key \"hidden_size\": expected an integer in [1, 1048576], found "
            "1099511627776");
  text = tiny_text_config();
  text["vocab_size"] = int64_t{1} << 62;
  EXPECT_TRUE(contains(fast_error_of(text),
                       "key \"vocab_size\": expected an integer in [1, "
                       "16777216], found 4611686018427387904"));
  // The default layer_types and the per_layer_config tables have one entry per layer.
  text = tiny_text_config();
  text.erase("layer_types");
  text["num_hidden_layers"] = int64_t{1} << 62;
  EXPECT_TRUE(contains(fast_error_of(text), "key \"num_hidden_layers\": expected an integer in"));
  text["per_layer_config"] = {{"1", {{"head_dim", 16}}}};
  EXPECT_TRUE(contains(fast_error_of(json{{"text_config", text}}),
                       "config.json text_config: key \"num_hidden_layers\": expected an integer"));
  // 2^63 and above: nlohmann holds them unsigned; they must not wrap to a negative int64.
  text = tiny_text_config();
  text["intermediate_size"] = std::numeric_limits<uint64_t>::max();
  EXPECT_TRUE(contains(fast_error_of(text),
                       "key \"intermediate_size\": expected an integer that fits in int64, found "
                       "18446744073709551615"));
  for (const char* key :
       {"num_attention_heads", "num_key_value_heads", "head_dim", "global_head_dim",
        "max_position_embeddings", "sliding_window", "hidden_size_per_layer_input"}) {
    text = tiny_text_config();
    text[key] = int64_t{1} << 40;
    EXPECT_TRUE(contains(fast_error_of(text), std::string("key \"") + key + "\": expected")) << key;
  }
  text = tiny_text_config();
  text["hidden_size_per_layer_input"] = 8;
  text["vocab_size_per_layer_input"] = int64_t{1} << 40;
  EXPECT_TRUE(contains(fast_error_of(text), "key \"vocab_size_per_layer_input\": expected"));
  text = tiny_text_config();
  text["enable_moe_block"] = true;
  text["num_experts"] = int64_t{1} << 40;
  text["top_k_experts"] = 2;
  text["moe_intermediate_size"] = 8;
  EXPECT_TRUE(contains(fast_error_of(text), "key \"num_experts\": expected"));
  text["num_experts"] = 4;
  text["top_k_experts"] = 5;
  EXPECT_TRUE(contains(fast_error_of(text),
                       "key \"top_k_experts\": expected an integer in [1, 4], found 5"));
  text["top_k_experts"] = 2;
  text["moe_intermediate_size"] = int64_t{1} << 40;
  EXPECT_TRUE(contains(fast_error_of(text), "key \"moe_intermediate_size\": expected"));
  // A per-layer override is checked as well, and named by where it came from.
  text = tiny_text_config();
  text["per_layer_config"] = {{"3", {{"head_dim", int64_t{1} << 40}}}};
  EXPECT_TRUE(contains(fast_error_of(text),
                       "layer 3: key \"per_layer_config.3.head_dim\": expected an even integer"));
  text = tiny_text_config();
  text["global_head_dim"] = 15;
  EXPECT_TRUE(contains(fast_error_of(text), "layer 1: key \"global_head_dim\": expected an even"));
  text = tiny_text_config();
  text["num_global_key_value_heads"] = 0;
  EXPECT_TRUE(contains(fast_error_of(text), "key \"num_global_key_value_heads\": expected"));
}

TEST(Gemma4Config, TensorSizesAreCheckedWithTheKeysTheyComeFrom) {
  // Each value within its own bound, their product past 2^36 elements for one tensor.
  json text = tiny_text_config();
  text["vocab_size"] = int64_t{1} << 24;
  text["hidden_size"] = int64_t{1} << 20;
  EXPECT_EQ(fast_error_of(text),
            "config.json: keys \"vocab_size\" * \"hidden_size\" (embed_tokens, lm_head): "
            "17592186044416 elements, more than the 68719476736 (2^36) one tensor may have");
  text = tiny_text_config();
  text["intermediate_size"] = int64_t{1} << 20;
  text["hidden_size"] = int64_t{1} << 17;
  EXPECT_TRUE(contains(fast_error_of(text), "keys \"intermediate_size\" * \"hidden_size\" (mlp)"));
  text = tiny_text_config();
  text["hidden_size_per_layer_input"] = int64_t{1} << 20;
  text["vocab_size_per_layer_input"] = int64_t{1} << 24;
  EXPECT_TRUE(contains(fast_error_of(text),
                       "keys \"vocab_size_per_layer_input\" * \"num_hidden_layers\" * "
                       "\"hidden_size_per_layer_input\" (embed_tokens_per_layer)"));
  text["vocab_size_per_layer_input"] = 16;
  text["hidden_size"] = int64_t{1} << 20;
  text["vocab_size"] = 16;
  EXPECT_TRUE(contains(fast_error_of(text), "(per_layer_model_projection)"));
  text = tiny_text_config();
  text["enable_moe_block"] = true;
  text["num_experts"] = int64_t{1} << 16;
  text["top_k_experts"] = 8;
  text["moe_intermediate_size"] = int64_t{1} << 20;
  EXPECT_TRUE(contains(fast_error_of(text),
                       "keys \"num_experts\" * 2 * \"moe_intermediate_size\" "
                       "* \"hidden_size\" (experts.gate_up_proj)"));
  // Query width: heads * head_dim of a layer, and the q_proj it sizes.
  text = tiny_text_config();
  text["num_attention_heads"] = 1024;
  text["global_head_dim"] = 2048;
  EXPECT_TRUE(contains(fast_error_of(text),
                       "layer 1: keys \"num_attention_heads\" * \"global_head_dim\": a query width "
                       "of 2097152, more than 1048576"));
  text["global_head_dim"] = 1024;
  text["hidden_size"] = int64_t{1} << 20;
  text["vocab_size"] = 16;
  EXPECT_TRUE(contains(fast_error_of(text), "(q_proj, o_proj)"));
  // A product past int64 (2^33 * 2^31) never gets as far: its factors' own bounds stop it.
  text = tiny_text_config();
  text["vocab_size"] = int64_t{1} << 33;
  text["hidden_size"] = int64_t{1} << 31;
  EXPECT_TRUE(contains(fast_error_of(text), "key \"hidden_size\": expected an integer in"));
  text["hidden_size"] = 32;
  EXPECT_TRUE(contains(fast_error_of(text), "key \"vocab_size\": expected an integer in"));
}

TEST(Gemma4Config, NumbersThatWouldGiveNaNAreRefused) {
  const auto with = [](const char* key, json value) {
    json text = tiny_text_config();
    text[key] = std::move(value);
    return fast_error_of(text);
  };
  for (double eps : {0.0, -1e-6, 1e-300, 2.0}) {
    EXPECT_TRUE(
        contains(with("rms_norm_eps", eps), "key \"rms_norm_eps\": expected a finite number"))
        << eps;
  }
  EXPECT_TRUE(contains(with("rms_norm_eps", "1e-6"), "key \"rms_norm_eps\": expected a number"));
  EXPECT_EQ(with("rms_norm_eps", 1e-5), "");
  for (double cap : {0.0, -30.0}) {
    EXPECT_TRUE(contains(with("final_logit_softcapping", cap),
                         "key \"final_logit_softcapping\": expected a finite number > 0"))
        << cap;
    EXPECT_TRUE(contains(with("attn_logit_softcapping", cap),
                         "key \"attn_logit_softcapping\": expected a finite number > 0"))
        << cap;
  }
  EXPECT_EQ(with("final_logit_softcapping", nullptr), "");
  EXPECT_EQ(with("attn_logit_softcapping", nullptr), "");
  EXPECT_TRUE(contains(with("max_position_embeddings", 0),
                       "key \"max_position_embeddings\": expected an integer in [1, 16777216], "
                       "found 0"));
  EXPECT_TRUE(contains(with("sliding_window", 0), "key \"sliding_window\": expected an integer"));
  EXPECT_TRUE(contains(with("num_kv_shared_layers", 4),
                       "key \"num_kv_shared_layers\": expected an integer in [0, 3], found 4"));
  EXPECT_TRUE(contains(with("initializer_range", -0.02), "key \"initializer_range\""));
  EXPECT_TRUE(contains(with("pad_token_id", 100),
                       "key \"pad_token_id\": expected an integer in [0, 99], found 100"));
  EXPECT_TRUE(contains(with("bos_token_id", -1), "key \"bos_token_id\""));
  EXPECT_TRUE(contains(with("eos_token_id", json::array({1, -2})), "key \"eos_token_id\""));
  // JSON cannot spell NaN or infinity; a literal past double's range is a parse error.
  EXPECT_TRUE(contains(error_of(R"({"rms_norm_eps": 1e400})"), "not valid JSON: number overflow"));

  for (const char* type : {"sliding_attention", "full_attention"}) {
    for (const auto& [key, value] :
         std::vector<std::pair<const char*, double>>{{"rope_theta", 0.0},
                                                     {"factor", -1.0},
                                                     {"partial_rotary_factor", 0.0},
                                                     {"partial_rotary_factor", 1.5}}) {
      json text = tiny_text_config();
      text["rope_parameters"] = {{type, {{"rope_type", "proportional"}, {key, value}}}};
      EXPECT_TRUE(contains(fast_error_of(text), std::string("key \"rope_parameters.") + type + "." +
                                                    key + "\": expected"))
          << type << " " << key << " " << value;
    }
  }

  // NaN and infinity reach finalize() only from code; it refuses them too.
  const Gemma4Config good = parse_gemma4_config(tiny_text_config().dump(), "x");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(finalize_error_of(good), "");
  Gemma4Config c = good;
  c.rms_norm_eps = nan;
  EXPECT_EQ(finalize_error_of(c),
            "cfg: key \"rms_norm_eps\": expected a finite number in [1.17549e-38, 1] (nonzero "
            "in float32), found nan");
  c = good;
  c.final_logit_softcapping = nan;
  EXPECT_TRUE(contains(finalize_error_of(c), "key \"final_logit_softcapping\""));
  c = good;
  c.final_logit_softcapping = inf;
  EXPECT_TRUE(contains(finalize_error_of(c), "key \"final_logit_softcapping\""));
  c = good;
  c.rope_full.partial_rotary_factor = nan;
  EXPECT_TRUE(contains(finalize_error_of(c),
                       "key \"rope_parameters.full_attention."
                       "partial_rotary_factor\": expected a number in (0, "
                       "1], found nan"));
  c = good;
  c.rope_sliding.rope_theta = inf;
  EXPECT_TRUE(
      contains(finalize_error_of(c), "key \"rope_parameters.sliding_attention.rope_theta\""));
  c = good;
  c.initializer_range = nan;
  EXPECT_TRUE(contains(finalize_error_of(c), "key \"initializer_range\""));
}

TEST(Gemma4Config, JsonIsParsedWithBoundedNestingAndShortErrors) {
  std::string deep = "{\"hidden_size\": ";
  for (int i = 0; i < 200; ++i) deep += "[";
  EXPECT_TRUE(contains(error_of(deep), "config.json: JSON nested deeper than 128 levels"));
  // A long bad input is not echoed back whole.
  const std::string bad = "{\"hidden_size\": \"" + std::string(100000, 'x');
  const std::string msg = error_of(bad);
  EXPECT_TRUE(contains(msg, "config.json: not valid JSON")) << msg.substr(0, 300);
  EXPECT_LT(msg.size(), 400u);
}

TEST(Gemma4Config, BundledConfigsAreWithinTheBounds) {
  const std::vector<std::string> names = bundled_config_names();
  ASSERT_GE(names.size(), 10u);
  for (const std::string& name : names) {
    const std::optional<std::string> text = bundled_config_json(name);
    ASSERT_TRUE(text) << name;
    EXPECT_NO_THROW(parse_gemma4_config(*text, name)) << name << ": " << error_of(*text);
  }
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
