// GGUF export: the container round-trips through our reader, Q8_0 equals ggml's reference
// quantizer, and a Gemma 4 export carries exactly the keys and tensors of gguf-gemma4.md §2-§3
// (written out again here, independently of model/gguf_gemma4.cpp's tables) with the merged
// checkpoint's values.
#include "io/gguf_writer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "export/gguf_gemma4.h"
#include "io/atomic_output.h"
#include "io/gguf_reader.h"
#include "io/input_error.h"
#include "model/gemma4_hf_checkpoint.h"
#include "peft/merged_checkpoint.h"
#include "peft/peft_adapter.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::bundled_config;
using testing::random_model;
using testing::ScratchDir;

// ---------------------------------------------------------------------------------------------
// The container.

TEST(GgufWriter, RoundTripsEveryValueTypeAndAlignsTensors) {
  ScratchDir dir;
  GgufWriter w;
  w.add_uint32("a.u32", 4000000000u);
  w.add_int32("a.i32", -7);
  w.add_float32("a.f32", 0.25f);
  w.add_bool("a.bool", true);
  w.add_string("a.str", "h\xC3\xA9llo");
  w.add_int32_array("a.i32s", {1, -2, 3});
  w.add_float32_array("a.f32s", {-1000.0f, 1e30f});
  w.add_bool_array("a.bools", {true, false, true});
  w.add_string_array("a.strs", {"x", "", "y z"});
  const torch::Tensor odd = torch::arange(7, torch::kFloat32);           // 28 bytes: padded
  const torch::Tensor half = torch::linspace(-2, 2, 6).reshape({2, 3});  // {3, 2}
  const torch::Tensor q = torch::randn({2, 64});                         // {64, 2}
  const auto fill_with = [](torch::Tensor t, GgmlType type) {
    return [t, type](const GgufWriter::ByteSink& emit) {
      const torch::Tensor b = ggml_encode(t, type);
      emit(b.data_ptr<uint8_t>(), b.numel());
    };
  };
  w.add_tensor("odd", {7}, GgmlType::kF32, fill_with(odd, GgmlType::kF32));
  w.add_tensor("half", {3, 2}, GgmlType::kF16, fill_with(half, GgmlType::kF16));
  w.add_tensor("bf", {3, 2}, GgmlType::kBF16, fill_with(half, GgmlType::kBF16));
  w.add_tensor("q", {64, 2}, GgmlType::kQ8_0, fill_with(q, GgmlType::kQ8_0));
  const fs::path path = dir / "t.gguf";
  {
    AtomicFileWriter file(path);
    w.write([&](const void* d, size_t n) { file.write(d, n); });
    file.commit();
  }
  EXPECT_EQ(fs::file_size(path), w.file_size());
  EXPECT_EQ(fs::file_size(path) % kGgufAlignment, 0u);

  const GgufReader r(path);
  EXPECT_EQ(r.header().version, 3u);
  ASSERT_EQ(r.metadata().size(), 9u);
  EXPECT_EQ(r.find("a.u32")->type, GgufType::kUint32);
  EXPECT_EQ(r.find("a.u32")->u, 4000000000u);
  EXPECT_EQ(r.find("a.i32")->i, -7);
  EXPECT_EQ(r.find("a.f32")->f, 0.25);
  EXPECT_TRUE(r.find("a.bool")->b);
  EXPECT_EQ(r.find("a.str")->s, "h\xC3\xA9llo");
  EXPECT_EQ(r.find("a.i32s")->array_type, GgufType::kInt32);
  EXPECT_EQ(r.find("a.i32s")->items.at(1).i, -2);
  EXPECT_EQ(r.find("a.f32s")->items.at(1).f, 1e30f);
  EXPECT_EQ(r.find("a.bools")->array_type, GgufType::kBool);
  EXPECT_FALSE(r.find("a.bools")->items.at(1).b);
  EXPECT_EQ(r.find("a.strs")->items.at(2).s, "y z");
  EXPECT_EQ(r.metadata().front().first, "a.u32");  // file order is insertion order

  EXPECT_EQ(r.header().data_offset % kGgufAlignment, 0u);
  ASSERT_EQ(r.tensors().size(), 4u);
  for (const auto& t : r.tensors()) EXPECT_EQ(t.offset % kGgufAlignment, 0u) << t.name;
  EXPECT_EQ(r.find_tensor("half")->offset, 32u);  // 28 bytes of "odd" padded to 32
  EXPECT_TRUE(torch::equal(r.tensor_values(*r.find_tensor("odd")), odd));
  EXPECT_TRUE(torch::equal(r.tensor_values(*r.find_tensor("half")),
                           half.to(torch::kHalf).to(torch::kFloat32)));
  EXPECT_TRUE(torch::equal(r.tensor_values(*r.find_tensor("bf")),
                           half.to(torch::kBFloat16).to(torch::kFloat32)));
  const torch::Tensor q_back = r.tensor_values(*r.find_tensor("q"));
  EXPECT_EQ(q_back.sizes(), q.sizes());
  EXPECT_LE((q_back - q).abs().max().item<float>(), q.abs().max().item<float>() / 127);
}

TEST(GgufWriter, FailedWriteLeavesNoFile) {
  ScratchDir dir;
  GgufWriter w;
  w.add_tensor("short", {4}, GgmlType::kF32, [](const GgufWriter::ByteSink& emit) {
    const float v[2] = {1, 2};
    emit(v, sizeof(v));  // half of what the header promised
  });
  const fs::path path = dir / "t.gguf";
  EXPECT_THROW(
      {
        AtomicFileWriter file(path);
        w.write([&](const void* d, size_t n) { file.write(d, n); });
        file.commit();
      },
      c10::Error);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

// ggml's quantize_row_q8_0_ref, one value at a time: the oracle for the vectorised encoder.
std::vector<uint8_t> q8_0_reference(const std::vector<float>& x) {
  std::vector<uint8_t> out;
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0;
    for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const float d = amax / 127;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    const c10::Half dh(d);
    uint16_t bits;
    std::memcpy(&bits, &dh, 2);
    out.push_back(bits & 0xff);
    out.push_back(bits >> 8);
    for (size_t j = 0; j < 32; ++j) {
      out.push_back(static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[b + j] * id))));
    }
  }
  return out;
}

TEST(GgufWriter, Q8_0MatchesGgmlReferenceBitForBit) {
  std::vector<float> x(32 * 64);
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0, 0.02f);
  for (auto& v : x) v = normal(gen);
  // Edge cases, one block each: an all-zero block (d = 0, q = 0); amax 127 so d = 1 and x/d
  // lands on halves, which round away from zero (torch::round would give 2 for 2.5, ggml 3); a
  // block of one sign.
  for (int j = 0; j < 32; ++j) x[j] = 0;
  for (int j = 0; j < 32; ++j) x[32 + j] = j == 0 ? 127.0f : (j % 2 ? 0.5f : -2.5f) + j;
  for (int j = 0; j < 32; ++j) x[64 + j] = -0.001f * (j + 1);
  const torch::Tensor t = torch::from_blob(x.data(), {64, 32}).clone();
  const torch::Tensor bytes = ggml_encode(t, GgmlType::kQ8_0);
  const std::vector<uint8_t> ref = q8_0_reference(x);
  ASSERT_EQ(bytes.numel(), static_cast<int64_t>(ref.size()));
  EXPECT_EQ(std::memcmp(bytes.data_ptr<uint8_t>(), ref.data(), ref.size()), 0);
  // Golden values of the second block: d = 1, and 1.5 -> 2, -0.5 -> -1 (j = 1, 2).
  EXPECT_EQ(static_cast<int8_t>(bytes[34 + 2 + 1].item<uint8_t>()), 2);
  EXPECT_EQ(static_cast<int8_t>(bytes[34 + 2 + 2].item<uint8_t>()), -1);
  const torch::Tensor back = ggml_decode(bytes, GgmlType::kQ8_0, t.numel()).reshape({64, 32});
  EXPECT_TRUE(torch::equal(back[0], torch::zeros({32})));
  const torch::Tensor scale = t.abs().amax(1, true) / 127;
  // Half a step, plus the f16 rounding of d (2^-11 relative) times |q| <= 127.
  EXPECT_TRUE(((back - t).abs() <= scale * 0.57).all().item<bool>());
}

// ---------------------------------------------------------------------------------------------
// The reader on damaged input.

std::string file_bytes(const fs::path& p) { return read_text_file(p); }

std::string parse_error(const std::string& bytes) {
  std::istringstream in(bytes);
  try {
    parse_gguf(in, bytes.size(), "mem");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

std::string small_gguf(const ScratchDir& dir) {
  GgufWriter w;
  w.add_string("general.architecture", "x");
  w.add_string_array("tokens", {"a", "b"});
  w.add_tensor("t", {32, 2}, GgmlType::kQ8_0, [](const GgufWriter::ByteSink& emit) {
    const torch::Tensor b = ggml_encode(torch::ones({64}), GgmlType::kQ8_0);
    emit(b.data_ptr<uint8_t>(), b.numel());
  });
  w.add_tensor("u", {3}, GgmlType::kF32, [](const GgufWriter::ByteSink& emit) {
    const float v[3] = {1, 2, 3};
    emit(v, sizeof(v));
  });
  const fs::path path = dir / "s.gguf";
  std::ofstream out(path, std::ios::binary);
  w.write([&](const void* d, size_t n) { out.write(static_cast<const char*>(d), n); });
  out.close();
  return file_bytes(path);
}

TEST(GgufReader, DamagedFilesAreInputErrors) {
  ScratchDir dir;
  const std::string good = small_gguf(dir);
  EXPECT_EQ(parse_error(good), "");
  EXPECT_NE(parse_error("GGUX" + good.substr(4)).find("magic"), std::string::npos);
  EXPECT_NE(parse_error(good.substr(0, good.size() - 40)).find("runs past the end"),
            std::string::npos);
  EXPECT_NE(parse_error(good.substr(0, 30)).find("exceeds the file"), std::string::npos);
  EXPECT_NE(parse_error(good.substr(0, 10)).find("truncated"), std::string::npos);
  std::string huge = good;
  const uint64_t many = uint64_t{1} << 60;
  std::memcpy(&huge[16], &many, 8);  // metadata count
  EXPECT_NE(parse_error(huge).find("exceeds the file"), std::string::npos);
  std::string version = good;
  version[4] = 9;
  EXPECT_NE(parse_error(version).find("version"), std::string::npos);

  // Random corruption: every mutant either parses or is an InputError, never a crash, a hang or
  // a giant allocation (this is what tests/fuzz runs at scale).
  std::mt19937 gen(11);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes = good;
    const int flips = 1 + trial % 4;
    for (int k = 0; k < flips; ++k) {
      bytes[gen() % bytes.size()] = static_cast<char>(gen() & 0xff);
    }
    if (trial % 7 == 0) bytes.resize(gen() % bytes.size());
    std::istringstream in(bytes);
    try {
      parse_gguf(in, bytes.size(), "mutant");
    } catch (const InputError&) {
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Gemma 4 exports.

// A small tokenizer of Gemma 4's kind: special tokens, the 256 byte pieces and a few pieces
// (297 base tokens), then one non-special and one special added token beyond the base; merges in
// both spellings, one with a space inside a part.
void write_small_tokenizer(const fs::path& dir) {
  std::vector<std::string> pieces = {"<pad>",   "<eos>",   "<bos>",      "<unk>",     "<mask>",
                                     "<|turn>", "<turn|>", "<|channel>", "<channel|>"};
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof(hex), "<0x%02X>", b);
    pieces.push_back(hex);
  }
  for (const char* p : {"\xE2\x96\x81", "a", "b",
                        "\xE2\x96\x81"
                        "a",
                        "ab"})
    pieces.push_back(p);
  while (pieces.size() < 297) pieces.push_back("p" + std::to_string(pieces.size()));
  json vocab = json::object();
  for (size_t i = 0; i < pieces.size(); ++i) vocab[pieces[i]] = i;
  json added = json::array();
  for (int i = 0; i <= 8; ++i) {
    added.push_back({{"id", i}, {"content", pieces[i]}, {"special", true}, {"normalized", false}});
  }
  added.push_back({{"id", 297}, {"content", "<extra>"}, {"special", false}});
  added.push_back({{"id", 298}, {"content", "<ctrl>"}, {"special", true}});
  const json tokenizer = {{"version", "1.0"},
                          {"added_tokens", added},
                          {"model",
                           {{"type", "BPE"},
                            {"byte_fallback", true},
                            {"vocab", vocab},
                            {"merges", json::array({json::array({"\xE2\x96\x81", "a"}), "a b",
                                                    json::array({"x y", "z"})})}}}};
  std::ofstream(dir / "tokenizer.json") << tokenizer.dump();
  const json config = {{"bos_token", "<bos>"},   {"eos_token", {{"content", "<eos>"}}},
                       {"pad_token", "<pad>"},   {"unk_token", "<unk>"},
                       {"add_bos_token", false}, {"add_eos_token", false}};
  std::ofstream(dir / "tokenizer_config.json") << config.dump();
  std::ofstream(dir / "chat_template.jinja") << "{{ bos_token }}{{ messages[0]['content'] }}";
}
constexpr int64_t kSmallVocab = 299;

// A random checkpoint of a bundled config with the small tokenizer beside it.
fs::path make_checkpoint(const ScratchDir& dir, const std::string& config_name,
                         torch::ScalarType dtype = torch::kFloat32, bool text_only = false) {
  const fs::path out = dir / config_name;
  Gemma4ForCausalLM model = random_model(bundled_config(config_name), 5);
  Gemma4SaveOptions options;
  options.dtype = dtype;
  options.text_only = text_only;
  save_gemma4(model, out, options);
  write_small_tokenizer(out);
  return out;
}

// §3 written out again: every tensor llama.cpp's gemma4 loader consumes for `c`, with its ggml
// shape and the checkpoint key (relative to the prefix) its values come from.
struct Expected {
  std::vector<int64_t> ne;
  std::string source;  // "" for rope_freqs
};
std::map<std::string, Expected> expected_tensors(const Gemma4Config& c, int64_t V) {
  std::map<std::string, Expected> t;
  const int64_t H = c.hidden_size, L = c.num_hidden_layers, P = c.hidden_size_per_layer_input;
  const int64_t h = c.num_attention_heads;
  t["token_embd.weight"] = {{H, V}, "embed_tokens.weight"};
  t["output_norm.weight"] = {{H}, "norm.weight"};
  t["rope_freqs.weight"] = {{c.global_head_dim / 2}, ""};
  if (P > 0) {
    t["per_layer_token_embd.weight"] = {{P * L, V}, "embed_tokens_per_layer.weight"};
    t["per_layer_model_proj.weight"] = {{H, P * L}, "per_layer_model_projection.weight"};
    t["per_layer_proj_norm.weight"] = {{P}, "per_layer_projection_norm.weight"};
  }
  for (int64_t i = 0; i < L; ++i) {
    const Gemma4LayerSpec& s = c.layers[i];
    const std::string b = "blk." + std::to_string(i) + ".", l = "layers." + std::to_string(i) + ".";
    const int64_t d = s.head_dim, k = s.num_kv_heads, F = s.intermediate_size;
    t[b + "attn_norm.weight"] = {{H}, l + "input_layernorm.weight"};
    t[b + "attn_q.weight"] = {{H, h * d}, l + "self_attn.q_proj.weight"};
    if (!s.kv_shared) {
      t[b + "attn_k.weight"] = {{H, k * d}, l + "self_attn.k_proj.weight"};
      t[b + "attn_k_norm.weight"] = {{d}, l + "self_attn.k_norm.weight"};
      if (s.has_v_proj) t[b + "attn_v.weight"] = {{H, k * d}, l + "self_attn.v_proj.weight"};
    }
    t[b + "attn_output.weight"] = {{h * d, H}, l + "self_attn.o_proj.weight"};
    t[b + "attn_q_norm.weight"] = {{d}, l + "self_attn.q_norm.weight"};
    t[b + "post_attention_norm.weight"] = {{H}, l + "post_attention_layernorm.weight"};
    t[b + "ffn_norm.weight"] = {{H}, l + "pre_feedforward_layernorm.weight"};
    t[b + "ffn_gate.weight"] = {{H, F}, l + "mlp.gate_proj.weight"};
    t[b + "ffn_up.weight"] = {{H, F}, l + "mlp.up_proj.weight"};
    t[b + "ffn_down.weight"] = {{F, H}, l + "mlp.down_proj.weight"};
    t[b + "post_ffw_norm.weight"] = {{H}, l + "post_feedforward_layernorm.weight"};
    t[b + "layer_output_scale.weight"] = {{1}, l + "layer_scalar"};
    if (P > 0) {
      t[b + "inp_gate.weight"] = {{H, P}, l + "per_layer_input_gate.weight"};
      t[b + "proj.weight"] = {{P, H}, l + "per_layer_projection.weight"};
      t[b + "post_norm.weight"] = {{H}, l + "post_per_layer_input_norm.weight"};
    }
    if (c.enable_moe_block) {
      const int64_t E = c.num_experts, Fe = c.moe_intermediate_size;
      t[b + "ffn_gate_inp.weight"] = {{H, E}, l + "router.proj.weight"};
      t[b + "ffn_gate_inp.scale"] = {{H}, l + "router.scale"};
      t[b + "pre_ffw_norm_2.weight"] = {{H}, l + "pre_feedforward_layernorm_2.weight"};
      t[b + "post_ffw_norm_1.weight"] = {{H}, l + "post_feedforward_layernorm_1.weight"};
      t[b + "post_ffw_norm_2.weight"] = {{H}, l + "post_feedforward_layernorm_2.weight"};
      t[b + "ffn_gate_up_exps.weight"] = {{H, 2 * Fe, E}, l + "experts.gate_up_proj"};
      t[b + "ffn_down_exps.weight"] = {{Fe, H, E}, l + "experts.down_proj"};
      t[b + "ffn_down_exps.scale"] = {{E}, l + "router.per_expert_scale"};
    }
  }
  return t;
}

// §2: every key with its type (arrays as kArray + element type).
struct KeyType {
  GgufType type;
  GgufType element = GgufType::kUint8;
};
std::map<std::string, KeyType> expected_keys(const Gemma4Config& c) {
  const KeyType u32{GgufType::kUint32}, f32{GgufType::kFloat32}, str{GgufType::kString},
      boolean{GgufType::kBool}, i32s{GgufType::kArray, GgufType::kInt32};
  std::map<std::string, KeyType> k = {
      {"general.architecture", str},
      {"general.type", str},
      {"general.name", str},
      {"general.file_type", u32},
      {"general.quantization_version", u32},
      {"gemma4.context_length", u32},
      {"gemma4.embedding_length", u32},
      {"gemma4.block_count", u32},
      {"gemma4.feed_forward_length", c.use_double_wide_mlp ? i32s : u32},
      {"gemma4.attention.head_count", u32},
      {"gemma4.attention.head_count_kv", c.num_global_key_value_heads ? i32s : u32},
      {"gemma4.attention.key_length", u32},
      {"gemma4.attention.value_length", u32},
      {"gemma4.attention.key_length_swa", u32},
      {"gemma4.attention.value_length_swa", u32},
      {"gemma4.attention.layer_norm_rms_epsilon", f32},
      {"gemma4.attention.sliding_window", u32},
      {"gemma4.attention.sliding_window_pattern", {GgufType::kArray, GgufType::kBool}},
      {"gemma4.attention.shared_kv_layers", u32},
      {"gemma4.embedding_length_per_layer_input", u32},
      {"gemma4.rope.freq_base", f32},
      {"gemma4.rope.freq_base_swa", f32},
      {"gemma4.rope.dimension_count", u32},
      {"gemma4.rope.dimension_count_swa", u32},
      {"gemma4.final_logit_softcapping", f32},
      {"tokenizer.ggml.model", str},
      {"tokenizer.ggml.tokens", {GgufType::kArray, GgufType::kString}},
      {"tokenizer.ggml.scores", {GgufType::kArray, GgufType::kFloat32}},
      {"tokenizer.ggml.token_type", i32s},
      {"tokenizer.ggml.merges", {GgufType::kArray, GgufType::kString}},
      {"tokenizer.ggml.bos_token_id", u32},
      {"tokenizer.ggml.eos_token_id", u32},
      {"tokenizer.ggml.unknown_token_id", u32},
      {"tokenizer.ggml.padding_token_id", u32},
      {"tokenizer.ggml.add_bos_token", boolean},
      {"tokenizer.ggml.add_eos_token", boolean},
      {"tokenizer.ggml.add_space_prefix", boolean},
      {"tokenizer.chat_template", str},
  };
  if (c.enable_moe_block) {
    k["gemma4.expert_count"] = u32;
    k["gemma4.expert_used_count"] = u32;
    k["gemma4.expert_feed_forward_length"] = u32;
  }
  return k;
}

std::vector<int64_t> int_items(const GgufValue& v) {
  std::vector<int64_t> out;
  for (const auto& item : v.items) out.push_back(item.type == GgufType::kBool ? item.b : item.i);
  return out;
}

// Exports `model_dir` and checks structure (§2 keys and types, §3 tensors and shapes, nothing
// else, alignment). Returns the reader.
GgufReader export_and_check(const fs::path& model_dir, const fs::path& out, GgufOutType type,
                            const std::optional<fs::path>& adapter = std::nullopt) {
  const MergedCheckpoint ckpt(model_dir, adapter);
  const Gemma4GgufExport report = export_gemma4_gguf(ckpt, out, type);
  const Gemma4Config& c = ckpt.config();
  GgufReader r(out);
  EXPECT_EQ(report.n_vocab, kSmallVocab);
  EXPECT_EQ(report.file_bytes, fs::file_size(out));

  const auto keys = expected_keys(c);
  EXPECT_EQ(r.metadata().size(), keys.size());
  for (const auto& [key, value] : r.metadata()) {
    const auto it = keys.find(key);
    if (it == keys.end()) {
      ADD_FAILURE() << "unexpected key " << key;
      continue;
    }
    EXPECT_EQ(value.type, it->second.type) << key;
    if (value.type == GgufType::kArray) {
      EXPECT_EQ(value.array_type, it->second.element) << key;
    }
  }
  for (const auto& [key, type] : keys) EXPECT_NE(r.find(key), nullptr) << "missing " << key;

  const auto tensors = expected_tensors(c, kSmallVocab);
  EXPECT_EQ(r.tensors().size(), tensors.size());
  for (const auto& t : r.tensors()) {
    const auto it = tensors.find(t.name);
    if (it == tensors.end()) {
      ADD_FAILURE() << "unexpected tensor " << t.name;
      continue;
    }
    EXPECT_EQ(t.ne, it->second.ne) << t.name;
    EXPECT_EQ(t.offset % kGgufAlignment, 0u) << t.name;
  }
  for (const auto& [name, e] : tensors)
    EXPECT_NE(r.find_tensor(name), nullptr) << "missing " << name;
  EXPECT_EQ(r.header().data_offset % kGgufAlignment, 0u);
  return r;
}

// The checkpoint's value of GGUF tensor `name` (the vocabulary tables cut to kSmallVocab rows).
torch::Tensor source_values(const MergedCheckpoint& ckpt, const std::string& key) {
  torch::Tensor v = ckpt.tensor(ckpt.prefix() + key).to(torch::kFloat32);
  if (key == "embed_tokens.weight" || key == "embed_tokens_per_layer.weight") {
    v = v.narrow(0, 0, kSmallVocab);
  }
  return v;
}

TEST(GgufGemma4, TinyE2bF32HasEveryKeyAndTensorWithTheCheckpointsValues) {
  ScratchDir dir;
  const fs::path model = make_checkpoint(dir, "tiny-e2b");
  const GgufReader r = export_and_check(model, dir / "e2b.gguf", GgufOutType::kF32);
  const MergedCheckpoint ckpt(model, std::nullopt);
  const Gemma4Config& c = ckpt.config();

  // §2 values for E2B's features: PLE, KV sharing, double-wide MLP on the shared layers.
  EXPECT_EQ(r.find("general.architecture")->s, "gemma4");
  EXPECT_EQ(r.find("general.file_type")->u, 0u);
  EXPECT_EQ(r.find("general.name")->s, "tiny-e2b");
  EXPECT_EQ(r.find("gemma4.context_length")->u, 4096u);
  EXPECT_EQ(r.find("gemma4.embedding_length")->u, 64u);
  EXPECT_EQ(r.find("gemma4.block_count")->u, 6u);
  EXPECT_EQ(int_items(*r.find("gemma4.feed_forward_length")),
            (std::vector<int64_t>{128, 128, 128, 128, 256, 256}));
  EXPECT_EQ(r.find("gemma4.attention.head_count")->u, 4u);
  EXPECT_EQ(r.find("gemma4.attention.head_count_kv")->u, 2u);
  EXPECT_EQ(r.find("gemma4.attention.key_length")->u, 32u);
  EXPECT_EQ(r.find("gemma4.attention.value_length")->u, 32u);
  EXPECT_EQ(r.find("gemma4.attention.key_length_swa")->u, 16u);
  EXPECT_EQ(r.find("gemma4.attention.value_length_swa")->u, 16u);
  EXPECT_FLOAT_EQ(r.find("gemma4.attention.layer_norm_rms_epsilon")->f, 1e-6f);
  EXPECT_EQ(r.find("gemma4.attention.sliding_window")->u, 4u);
  EXPECT_EQ(int_items(*r.find("gemma4.attention.sliding_window_pattern")),
            (std::vector<int64_t>{1, 1, 1, 0, 1, 0}));
  EXPECT_EQ(r.find("gemma4.attention.shared_kv_layers")->u, 2u);
  EXPECT_EQ(r.find("gemma4.embedding_length_per_layer_input")->u, 16u);
  EXPECT_EQ(r.find("gemma4.rope.freq_base")->f, 1e6);
  EXPECT_EQ(r.find("gemma4.rope.freq_base_swa")->f, 1e4);
  EXPECT_EQ(r.find("gemma4.rope.dimension_count")->u, 32u);
  EXPECT_EQ(r.find("gemma4.rope.dimension_count_swa")->u, 16u);
  EXPECT_EQ(r.find("gemma4.final_logit_softcapping")->f, 30.0);

  // Tokenizer keys.
  const GgufValue& tokens = *r.find("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.items.size(), static_cast<size_t>(kSmallVocab));
  EXPECT_EQ(tokens.items[2].s, "<bos>");
  EXPECT_EQ(tokens.items[9].s, "<0x00>");
  EXPECT_EQ(tokens.items[297].s, "<extra>");
  EXPECT_EQ(tokens.items[298].s, "<ctrl>");
  const std::vector<int64_t> types = int_items(*r.find("tokenizer.ggml.token_type"));
  EXPECT_EQ(types[0], 3);    // <pad>: special
  EXPECT_EQ(types[6], 3);    // <turn|>: special
  EXPECT_EQ(types[7], 4);    // <|channel>: forced user-defined so llama.cpp renders it
  EXPECT_EQ(types[8], 4);    // <channel|>
  EXPECT_EQ(types[9], 6);    // <0x00>: byte
  EXPECT_EQ(types[264], 6);  // <0xFF>
  EXPECT_EQ(types[265], 1);  // ▁: normal
  EXPECT_EQ(types[297], 4);  // non-special added token
  EXPECT_EQ(types[298], 3);  // special added token
  for (const auto& s : r.find("tokenizer.ggml.scores")->items) EXPECT_EQ(s.f, -1000.0);
  const GgufValue& merges = *r.find("tokenizer.ggml.merges");
  ASSERT_EQ(merges.items.size(), 3u);
  EXPECT_EQ(merges.items[0].s, "\xE2\x96\x81 a");
  EXPECT_EQ(merges.items[1].s, "a b");
  EXPECT_EQ(merges.items[2].s, "x\xC4\xA0y z");  // a space inside a part is U+0120
  EXPECT_EQ(r.find("tokenizer.ggml.model")->s, "gemma4");
  EXPECT_EQ(r.find("tokenizer.ggml.bos_token_id")->u, 2u);
  EXPECT_EQ(r.find("tokenizer.ggml.eos_token_id")->u, 1u);
  EXPECT_EQ(r.find("tokenizer.ggml.unknown_token_id")->u, 3u);
  EXPECT_EQ(r.find("tokenizer.ggml.padding_token_id")->u, 0u);
  EXPECT_TRUE(r.find("tokenizer.ggml.add_bos_token")->b);  // whatever tokenizer_config says
  EXPECT_FALSE(r.find("tokenizer.ggml.add_eos_token")->b);
  EXPECT_FALSE(r.find("tokenizer.ggml.add_space_prefix")->b);
  EXPECT_EQ(r.find("tokenizer.chat_template")->s, "{{ bos_token }}{{ messages[0]['content'] }}");

  // Values: F32 everywhere and equal to the checkpoint's (embedding tables cut to the vocab).
  for (const auto& [name, e] : expected_tensors(c, kSmallVocab)) {
    const GgufTensorInfo& info = *r.find_tensor(name);
    EXPECT_EQ(info.type, GgmlType::kF32) << name;
    const torch::Tensor got = r.tensor_values(info);
    if (e.source.empty()) {
      // 32 / 2 pairs, the first 32·0.25/2 = 4 rotate.
      std::vector<float> want(16, 1e30f);
      std::fill(want.begin(), want.begin() + 4, 1.0f);
      EXPECT_TRUE(torch::equal(got, torch::tensor(want))) << got;
      continue;
    }
    EXPECT_TRUE(torch::equal(got, source_values(ckpt, e.source))) << name;
  }
}

TEST(GgufGemma4, TinyMoeAndTiny31bStructure) {
  ScratchDir dir;
  {
    const fs::path model = make_checkpoint(dir, "tiny-moe", torch::kFloat32, /*text_only=*/true);
    const GgufReader r = export_and_check(model, dir / "moe.gguf", GgufOutType::kF32);
    EXPECT_EQ(r.find("gemma4.expert_count")->u, 8u);
    EXPECT_EQ(r.find("gemma4.expert_used_count")->u, 2u);
    EXPECT_EQ(r.find("gemma4.expert_feed_forward_length")->u, 32u);
    EXPECT_EQ(r.find("gemma4.feed_forward_length")->u, 96u);
    EXPECT_EQ(int_items(*r.find("gemma4.attention.head_count_kv")),
              (std::vector<int64_t>{2, 2, 2, 1}));
    EXPECT_EQ(r.find("gemma4.embedding_length_per_layer_input")->u, 0u);
    EXPECT_EQ(r.find("gemma4.attention.shared_kv_layers")->u, 0u);
    // 3-D experts keep the checkpoint's bytes: HF [E, 2F, H] is ggml {H, 2F, E}.
    const MergedCheckpoint ckpt(model, std::nullopt);
    EXPECT_EQ(ckpt.prefix(), "model.");
    EXPECT_TRUE(torch::equal(r.tensor_values(*r.find_tensor("blk.1.ffn_gate_up_exps.weight")),
                             source_values(ckpt, "layers.1.experts.gate_up_proj")));
    EXPECT_TRUE(torch::equal(r.tensor_values(*r.find_tensor("blk.1.ffn_down_exps.scale")),
                             source_values(ckpt, "layers.1.router.per_expert_scale")));
  }
  {
    const fs::path model = make_checkpoint(dir, "tiny-31b");
    const GgufReader r = export_and_check(model, dir / "31b.gguf", GgufOutType::kF32);
    EXPECT_EQ(int_items(*r.find("gemma4.attention.head_count_kv")),
              (std::vector<int64_t>{2, 2, 1, 2, 2, 1}));
    EXPECT_EQ(r.find_tensor("blk.2.attn_v.weight"), nullptr);  // K = V on full layers
    EXPECT_NE(r.find_tensor("blk.1.attn_v.weight"), nullptr);
  }
}

// tiny-e2b has a matrix whose rows are not whole Q8_0 blocks (proj, ne[0] = P = 16: F16, as
// gguf-py falls back); tiny-moe has the router (always F32) and 3-D experts.
TEST(GgufGemma4, Q8_0F16AndBf16FollowTheConvertersTypeRules) {
  for (const std::string config : {"tiny-e2b", "tiny-moe"}) {
    ScratchDir dir;
    const fs::path model = make_checkpoint(dir, config);
    const MergedCheckpoint ckpt(model, std::nullopt);
    const auto tensors = expected_tensors(ckpt.config(), kSmallVocab);
    for (GgufOutType type : {GgufOutType::kQ8_0, GgufOutType::kF16, GgufOutType::kBF16}) {
      SCOPED_TRACE(config + " " + gguf_out_type_name(type));
      const fs::path out = dir / (std::string(gguf_out_type_name(type)) + ".gguf");
      const GgufReader r = export_and_check(model, out, type);
      EXPECT_EQ(r.find("general.file_type")->u, gguf_file_type(type));
      for (const auto& [name, e] : tensors) {
        const GgufTensorInfo& info = *r.find_tensor(name);
        const bool f32 = info.ne.size() == 1 || name.find("_norm.weight") != std::string::npos ||
                         name.find("ffn_gate_inp") != std::string::npos;
        GgmlType want = f32                          ? GgmlType::kF32
                        : type == GgufOutType::kF16  ? GgmlType::kF16
                        : type == GgufOutType::kBF16 ? GgmlType::kBF16
                        : info.ne[0] % 32 == 0       ? GgmlType::kQ8_0
                                                     : GgmlType::kF16;
        EXPECT_EQ(info.type, want) << name;
        if (e.source.empty()) continue;
        const torch::Tensor got = r.tensor_values(info), src = source_values(ckpt, e.source);
        switch (info.type) {
          case GgmlType::kF32:
            EXPECT_TRUE(torch::equal(got, src)) << name;
            break;
          case GgmlType::kF16:
            EXPECT_TRUE(torch::equal(got, src.to(torch::kHalf).to(torch::kFloat32))) << name;
            break;
          case GgmlType::kBF16:
            EXPECT_TRUE(torch::equal(got, src.to(torch::kBFloat16).to(torch::kFloat32))) << name;
            break;
          case GgmlType::kQ8_0: {
            // Each block within half a step (max|x|/127) of the original, plus the f16 rounding of
            // the step times |q| <= 127.
            const torch::Tensor blocks = src.reshape({-1, 32});
            const torch::Tensor step = blocks.abs().amax(1, true) / 127;
            EXPECT_TRUE(((got.reshape({-1, 32}) - blocks).abs() <= step * 0.57).all().item<bool>())
                << name;
            break;
          }
        }
      }
    }
  }
}

TEST(GgufGemma4, Bf16CheckpointKeepsItsBitsAndAdapterIsMerged) {
  ScratchDir dir;
  const fs::path model = make_checkpoint(dir, "tiny-e2b", torch::kBFloat16);
  {
    const GgufReader r = export_and_check(model, dir / "bf16.gguf", GgufOutType::kBF16);
    const MergedCheckpoint ckpt(model, std::nullopt);
    const torch::Tensor q = ckpt.tensor(ckpt.prefix() + "layers.0.self_attn.q_proj.weight");
    ASSERT_EQ(q.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(torch::equal(r.tensor_bytes(*r.find_tensor("blk.0.attn_q.weight")),
                             q.contiguous().view(torch::kUInt8).reshape(-1)));
  }
  // A LoRA adapter trained on this base: its weights appear merged, the others unchanged.
  Gemma4ForCausalLM trained = random_model(bundled_config("tiny-e2b"), 5);
  AdapterSpec spec;
  spec.lora.r = 4;
  attach_adapters(trained, spec);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : trainable_parameters(trained)) p.normal_(0, 0.1);
  }
  save_peft_adapter(trained, spec, kMultimodalPrefix, "base", dir / "adapter");
  const GgufReader r =
      export_and_check(model, dir / "merged.gguf", GgufOutType::kF32, dir / "adapter");
  const MergedCheckpoint base(model, std::nullopt), merged(model, dir / "adapter");
  const std::string q = "layers.0.self_attn.q_proj.weight",
                    norm = "layers.0.input_layernorm.weight";
  const torch::Tensor got_q = r.tensor_values(*r.find_tensor("blk.0.attn_q.weight"));
  EXPECT_TRUE(torch::equal(got_q, source_values(merged, q)));
  EXPECT_FALSE(torch::allclose(got_q, source_values(base, q)));
  EXPECT_TRUE(torch::equal(r.tensor_values(*r.find_tensor("blk.0.attn_norm.weight")),
                           source_values(base, norm)));
}

TEST(GgufGemma4, BadInputIsAnErrorAndLeavesNoFile) {
  ScratchDir dir;
  const fs::path model = make_checkpoint(dir, "tiny-31b");
  const auto error_of = [&](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const InputError& e) {
      return e.what();
    }
    return "";
  };
  const auto files_in = [&](const fs::path& d) {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(d)) names.insert(e.path().filename().string());
    return names;
  };
  const std::set<std::string> before = files_in(dir.path());
  const MergedCheckpoint ckpt(model, std::nullopt);

  // An existing output is refused and left alone.
  std::ofstream(dir / "taken.gguf") << "mine";
  EXPECT_NE(error_of([&] {
              export_gemma4_gguf(ckpt, dir / "taken.gguf", GgufOutType::kF32);
            }).find("already exists"),
            std::string::npos);
  EXPECT_EQ(read_text_file(dir / "taken.gguf"), "mine");
  fs::remove(dir / "taken.gguf");

  EXPECT_NE(error_of([] { gguf_out_type_from_name("q4_0"); }).find("f32, f16, bf16 or q8_0"),
            std::string::npos);

  // An adapter made for another base (tiny-e2b's K/V-shared layers have no k_proj adapters).
  Gemma4ForCausalLM other = random_model(bundled_config("tiny-e2b"), 1);
  AdapterSpec spec;
  attach_adapters(other, spec);
  save_peft_adapter(other, spec, kMultimodalPrefix, "base", dir / "other-adapter");
  const std::string adapter_error = error_of([&] {
    const MergedCheckpoint wrong(model, dir / "other-adapter");
    export_gemma4_gguf(wrong, dir / "a.gguf", GgufOutType::kF32);
  });
  EXPECT_NE(adapter_error, "");

  // A tokenizer larger than the embedding is another model's.
  const fs::path big = dir / "big-vocab";
  fs::copy(model, big);
  {
    json tok = json::parse(read_text_file(big / "tokenizer.json"));
    for (int i = 297; i < 600; ++i) tok["model"]["vocab"][std::to_string(i) + "q"] = i;
    tok["added_tokens"] = json::array();
    std::ofstream(big / "tokenizer.json") << tok.dump();
  }
  const std::string vocab_error = error_of([&] {
    export_gemma4_gguf(MergedCheckpoint(big, std::nullopt), dir / "b.gguf", GgufOutType::kF32);
  });
  EXPECT_NE(vocab_error.find("rows"), std::string::npos) << vocab_error;

  // No tokenizer at all.
  fs::remove(big / "tokenizer.json");
  EXPECT_NE(error_of([&] {
              export_gemma4_gguf(MergedCheckpoint(big, std::nullopt), dir / "c.gguf",
                                 GgufOutType::kF32);
            }).find("no tokenizer.json"),
            std::string::npos);

  std::set<std::string> after = files_in(dir.path());
  after.erase("big-vocab");
  after.erase("other-adapter");
  EXPECT_EQ(after, before);  // no .gguf and no temporary file anywhere
}

TEST(GgufGemma4, CaveatsNameWhatLlamaCppComputesDifferently) {
  // tiny-e2b with its layers 2 and 3 swapped: the shared layers then read layers 3 (sliding) and
  // 2 (full); llama.cpp reads S-2 = 2 for sliding and S-1 = 3 for full layers.
  nlohmann::json swapped = nlohmann::json::parse(*bundled_config_json("tiny-e2b"));
  swapped["text_config"]["layer_types"] = {"sliding_attention", "sliding_attention",
                                           "full_attention",    "sliding_attention",
                                           "sliding_attention", "full_attention"};
  const auto caveats =
      gemma4_gguf_caveats(parse_gemma4_config(swapped.dump(), "tiny-e2b, layers 2 and 3 swapped"));
  ASSERT_EQ(caveats.size(), 1u);
  EXPECT_NE(caveats[0].find("layer 4"), std::string::npos) << caveats[0];
  EXPECT_TRUE(gemma4_gguf_caveats(bundled_config("tiny-e2b")).empty());
  EXPECT_TRUE(gemma4_gguf_caveats(bundled_config("demo")).empty());
  EXPECT_TRUE(gemma4_gguf_caveats(bundled_config("tiny-31b")).empty());
  EXPECT_TRUE(gemma4_gguf_caveats(bundled_config("e2b")).empty());
  EXPECT_TRUE(gemma4_gguf_caveats(bundled_config("e4b")).empty());
}

}  // namespace
}  // namespace gemma
