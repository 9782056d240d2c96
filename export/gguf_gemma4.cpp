#include "export/gguf_gemma4.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "io/atomic_output.h"
#include "io/bounded_json.h"
#include "io/input_error.h"
#include "io/string_match.h"
#include "model/gemma4_hf_checkpoint.h"
#include "peft/merged_checkpoint.h"

namespace gemma {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kArch = "gemma4";

// §3: checkpoint names (relative to the decoder prefix) and llama.cpp's names for them. Checked
// against gguf-py's tensor map for GEMMA4 (tests/reference/test_gguf.py).
struct TensorName {
  const char* checkpoint;
  const char* gguf;
};
constexpr TensorName kGlobalTensorNames[] = {
    {"embed_tokens.weight", "token_embd.weight"},
    {"norm.weight", "output_norm.weight"},
    {"embed_tokens_per_layer.weight", "per_layer_token_embd.weight"},
    {"per_layer_model_projection.weight", "per_layer_model_proj.weight"},
    {"per_layer_projection_norm.weight", "per_layer_proj_norm.weight"},
};
// "layers.N." + checkpoint name -> "blk.N." + GGUF name.
constexpr TensorName kLayerTensorNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"post_attention_layernorm.weight", "post_attention_norm.weight"},
    {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"},
    {"layer_scalar", "layer_output_scale.weight"},  // a buffer; the converter appends .weight
    {"per_layer_input_gate.weight", "inp_gate.weight"},
    {"per_layer_projection.weight", "proj.weight"},
    {"post_per_layer_input_norm.weight", "post_norm.weight"},
    {"router.proj.weight", "ffn_gate_inp.weight"},
    {"router.scale", "ffn_gate_inp.scale"},
    {"router.per_expert_scale", "ffn_down_exps.scale"},
    {"experts.gate_up_proj", "ffn_gate_up_exps.weight"},  // gate rows first, as llama.cpp reads
    {"experts.down_proj", "ffn_down_exps.weight"},
    {"pre_feedforward_layernorm_2.weight", "pre_ffw_norm_2.weight"},
    {"post_feedforward_layernorm_1.weight", "post_ffw_norm_1.weight"},
    {"post_feedforward_layernorm_2.weight", "post_ffw_norm_2.weight"},
};
constexpr const char* kLmHeadKey = "lm_head.weight";
constexpr const char* kOutputName = "output.weight";
constexpr const char* kRopeFreqsName = "rope_freqs.weight";
// The vocabulary tables: llama.cpp sizes both by the tokenizer's n_vocab.
constexpr const char* kVocabTables[] = {"embed_tokens.weight", "embed_tokens_per_layer.weight"};

// tokenizer_config.json special-token fields and the GGUF keys SpecialVocab writes them to.
struct SpecialTokenKey {
  const char* type;
  const char* gguf_key;
};
constexpr SpecialTokenKey kSpecialTokenKeys[] = {
    {"bos", "tokenizer.ggml.bos_token_id"},     {"eos", "tokenizer.ggml.eos_token_id"},
    {"unk", "tokenizer.ggml.unknown_token_id"}, {"sep", "tokenizer.ggml.seperator_token_id"},
    {"pad", "tokenizer.ggml.padding_token_id"}, {"cls", "tokenizer.ggml.cls_token_id"},
    {"mask", "tokenizer.ggml.mask_token_id"},
};

// The converter forces these to USER_DEFINED so llama.cpp renders them and its Gemma 4 chat parser
// can read channels and tool calls (§2, token_type).
const std::set<std::string>& visible_tokens() {
  static const std::set<std::string> kVisible = {
      "<|channel>",       "<channel|>",       "<|tool_call>", "<tool_call|>",
      "<|tool_response>", "<tool_response|>", "<|\"|>"};
  return kVisible;
}

enum TokenType : int32_t { kNormal = 1, kControl = 3, kUserDefined = 4, kByte = 6 };

std::string arch_key(const char* name) { return std::string(kArch) + "." + name; }

// `<0xNN>`: SentencePiece's byte-fallback pieces.
bool is_byte_token(const std::string& t) {
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
         std::isxdigit(static_cast<unsigned char>(t[3])) &&
         std::isxdigit(static_cast<unsigned char>(t[4]));
}

std::optional<json> read_optional_json(const fs::path& path) {
  if (!fs::exists(path)) return std::nullopt;
  return parse_json_input(read_text_file(path), path.string());
}

// A tokenizer_config.json token entry: "text" or {"content": "text", ...}.
std::optional<std::string> token_content(const json& entry) {
  if (entry.is_string()) return entry.get<std::string>();
  if (entry.is_object() && entry.contains("content") && entry["content"].is_string()) {
    return entry["content"].get<std::string>();
  }
  return std::nullopt;
}

// "left right", with spaces inside a part written as U+0120 as gguf-py's SpecialVocab does
// (llama.cpp splits merges at the one ASCII space).
std::string merge_text(const json& merge, const std::string& where) {
  if (merge.is_string()) return merge.get<std::string>();
  if (!merge.is_array() || merge.size() != 2 || !merge[0].is_string() || !merge[1].is_string()) {
    throw InputError(where + ": model.merges entries must be \"a b\" or [\"a\", \"b\"]");
  }
  std::string out;
  for (int part = 0; part < 2; ++part) {
    if (part) out += ' ';
    for (char ch : merge[part].get<std::string>()) {
      if (ch == ' ') {
        out += "\xC4\xA0";
      } else {
        out += ch;
      }
    }
  }
  return out;
}

// tokenizer.chat_template: tokenizer_config.json's field (a string, or a list of named templates
// whose "default" is taken), else chat_template.jinja, else chat_template.json.
std::optional<std::string> read_chat_template(const fs::path& dir, const json& config) {
  if (config.contains("chat_template")) {
    const json& t = config["chat_template"];
    if (t.is_string()) return t.get<std::string>();
    if (t.is_array()) {
      for (const json& entry : t) {
        if (entry.is_object() && entry.value("name", "") == "default" &&
            entry.contains("template") && entry["template"].is_string()) {
          return entry["template"].get<std::string>();
        }
      }
    }
    return std::nullopt;
  }
  if (fs::exists(dir / "chat_template.jinja")) return read_text_file(dir / "chat_template.jinja");
  if (const auto j = read_optional_json(dir / "chat_template.json")) {
    if (j->is_object() && j->contains("chat_template") && (*j)["chat_template"].is_string()) {
      return (*j)["chat_template"].get<std::string>();
    }
  }
  return std::nullopt;
}

uint32_t to_u32(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= static_cast<int64_t>(UINT32_MAX), what, " out of uint32 range");
  return static_cast<uint32_t>(v);
}

int64_t head_dim_of(const Gemma4Config& c, LayerType type) {
  for (const auto& s : c.layers) {
    if (s.type == type) return s.head_dim;
  }
  return type == LayerType::kFull ? c.global_head_dim : c.head_dim;
}

bool has_full_layer(const Gemma4Config& c) {
  return std::any_of(c.layers.begin(), c.layers.end(),
                     [](const Gemma4LayerSpec& s) { return s.type == LayerType::kFull; });
}

// Streams `values` encoded as `type` in slices of whole rows, so a vocabulary table is converted
// a few MB at a time rather than copied whole.
void emit_encoded(const torch::Tensor& values, GgmlType type, const GgufWriter::ByteSink& emit) {
  constexpr int64_t kChunkValues = int64_t{1} << 22;
  const int64_t rows = values.dim() <= 1 ? 1 : values.size(0);
  const int64_t per_row = rows == 0 ? 0 : values.numel() / rows;
  const int64_t step = values.dim() <= 1 ? 1 : std::max<int64_t>(1, kChunkValues / per_row);
  for (int64_t start = 0; start < rows; start += step) {
    const torch::Tensor part =
        values.dim() <= 1 ? values : values.narrow(0, start, std::min(step, rows - start));
    const torch::Tensor bytes = ggml_encode(part, type);
    emit(bytes.data_ptr<uint8_t>(), static_cast<size_t>(bytes.numel()));
  }
}

}  // namespace

Gemma4GgufVocab read_gemma4_gguf_vocab(const fs::path& dir) {
  const fs::path path = dir / "tokenizer.json";
  const std::string where = path.string();
  if (!fs::exists(path)) {
    throw InputError(dir.string() +
                     ": no tokenizer.json; a GGUF carries its tokenizer, so copy the base model's "
                     "tokenizer.json and tokenizer_config.json into this folder");
  }
  Gemma4GgufVocab out;
  try {
    const json tok = *read_optional_json(path);
    const json model = tok.value("model", json::object());
    if (model.value("type", "") != "BPE" || !model.contains("vocab") ||
        !model["vocab"].is_object()) {
      throw InputError(where + ": expected a BPE model with a \"vocab\" object (Gemma 4's " +
                       "tokenizer.json), found model.type \"" + model.value("type", "") + "\"");
    }
    // The base vocabulary in id order; ids must be exactly 0..N-1.
    const size_t base = model["vocab"].size();
    std::vector<std::string>& tokens = out.tokens;
    tokens.assign(base, "");
    std::vector<bool> seen(base, false);
    for (const auto& [text, id_json] : model["vocab"].items()) {
      const int64_t id = id_json.get<int64_t>();
      if (id < 0 || id >= static_cast<int64_t>(base) || seen[id]) {
        throw InputError(where + ": model.vocab id " + std::to_string(id) + " of \"" + text +
                         "\" is repeated or outside 0.." + std::to_string(base - 1));
      }
      seen[id] = true;
      tokens[id] = text;
    }
    // Added tokens: inside the base range their text wins (as HF's get_vocab); beyond it they
    // must continue the ids without gaps, since llama.cpp's ids are list positions.
    std::set<int64_t> special, added;
    std::map<int64_t, std::string> beyond;
    const json added_tokens = tok.value("added_tokens", json::array());
    for (const json& a : added_tokens) {
      const int64_t id = a.at("id").get<int64_t>();
      const std::string content = a.at("content").get<std::string>();
      if (id < 0) throw InputError(where + ": added token \"" + content + "\" has a negative id");
      if (id < static_cast<int64_t>(base)) {
        tokens[id] = content;
      } else {
        beyond[id] = content;
      }
      (a.value("special", false) ? special : added).insert(id);
    }
    for (const auto& [id, content] : beyond) {
      if (id != static_cast<int64_t>(tokens.size())) {
        throw InputError(where + ": added token \"" + content + "\" has id " + std::to_string(id) +
                         ", expected " + std::to_string(tokens.size()) +
                         " (ids must follow the vocabulary without gaps)");
      }
      tokens.push_back(content);
    }
    const auto n_vocab = static_cast<int64_t>(tokens.size());

    const json config = read_optional_json(dir / "tokenizer_config.json").value_or(json::object());
    const json model_config = read_optional_json(dir / "config.json").value_or(json::object());
    const auto added_id = [&](const std::string& content) -> std::optional<int64_t> {
      for (const json& a : added_tokens) {
        if (a.value("content", "") == content) return a.at("id").get<int64_t>();
      }
      return std::nullopt;
    };
    // HF's special tokens: the named ones of tokenizer_config.json and its additional/extra
    // lists, besides every added token marked "special".
    const auto mark_special = [&](const json& entry) {
      if (const auto content = token_content(entry)) {
        if (const auto id = added_id(*content)) special.insert(*id);
      }
    };
    for (const auto& k : kSpecialTokenKeys) {
      if (config.contains(std::string(k.type) + "_token")) {
        mark_special(config[std::string(k.type) + "_token"]);
      }
    }
    for (const char* list : {"additional_special_tokens", "extra_special_tokens"}) {
      if (!config.contains(list)) continue;
      for (const auto& [name, entry] : config[list].items()) mark_special(entry);
    }

    out.token_types.resize(n_vocab);
    for (int64_t id = 0; id < n_vocab; ++id) {
      int32_t type = kNormal;
      if (id < static_cast<int64_t>(base) && is_byte_token(tokens[id])) {
        type = kByte;
      } else if (special.count(id)) {
        type = kControl;
      } else if (added.count(id) || id >= static_cast<int64_t>(base)) {
        type = kUserDefined;
      }
      if (visible_tokens().count(tokens[id])) type = kUserDefined;
      out.token_types[id] = type;
    }

    const json merges = model.value("merges", json::array());
    if (!merges.is_array() || merges.empty()) {
      throw InputError(where + ": model.merges is missing or empty; llama.cpp's gemma4 " +
                       "tokenizer needs the BPE merges");
    }
    out.merges.reserve(merges.size());
    for (const json& m : merges) out.merges.push_back(merge_text(m, where));

    // Special ids as gguf-py's SpecialVocab finds them: the tokenizer_config.json entry looked up
    // among the added tokens, else config.json's `<type>_token_id` (or its text_config's).
    for (const auto& k : kSpecialTokenKeys) {
      const std::string field = std::string(k.type) + "_token";
      std::optional<int64_t> id;
      if (config.contains(field)) {
        if (const auto content = token_content(config[field])) id = added_id(*content);
      }
      if (!id) {
        const std::string id_field = std::string(k.type) + "_token_id";
        json value = model_config.value(id_field, json());
        if (value.is_null() && model_config.contains("text_config")) {
          value = model_config["text_config"].value(id_field, json());
        }
        if (value.is_number_integer()) id = value.get<int64_t>();
      }
      if (id && *id >= 0 && *id < n_vocab) {
        out.special_ids.emplace_back(k.gguf_key, static_cast<uint32_t>(*id));
      }
    }
    if (config.contains("add_eos_token") && config["add_eos_token"].is_boolean()) {
      out.add_eos = config["add_eos_token"].get<bool>();
    }
    out.chat_template = read_chat_template(dir, config);
  } catch (const json::exception& e) {
    throw InputError(where + ": " + e.what());
  }
  return out;
}

GgmlType gemma4_gguf_storage(const std::string& name, const std::vector<int64_t>& ne,
                             GgufOutType out_type) {
  // As the converter's prepare_tensors: vectors and norms stay F32 (llama.cpp's code for them is
  // F32-only), so do the router (ffn_gate_inp) and anything not named `.weight`.
  if (ne.size() <= 1 || ends_with(name, "_norm.weight") || ends_with(name, "ffn_gate_inp.weight") ||
      !ends_with(name, ".weight")) {
    return GgmlType::kF32;
  }
  switch (out_type) {
    case GgufOutType::kF32:
      return GgmlType::kF32;
    case GgufOutType::kF16:
      return GgmlType::kF16;
    case GgufOutType::kBF16:
      return GgmlType::kBF16;
    case GgufOutType::kQ8_0:
      // gguf-py cannot quantize rows that are not whole blocks and falls back to F16.
      return ggml_type_fits(GgmlType::kQ8_0, ne) ? GgmlType::kQ8_0 : GgmlType::kF16;
  }
  return GgmlType::kF32;
}

std::vector<Gemma4GgufTensor> gemma4_gguf_tensors(const Gemma4Config& config,
                                                  const std::string& prefix, int64_t n_vocab,
                                                  GgufOutType out_type, bool has_lm_head) {
  std::vector<Gemma4GgufTensor> out;
  const auto add = [&](const std::string& name, const std::string& source,
                       const std::vector<int64_t>& source_shape, bool vocab_table) {
    Gemma4GgufTensor t;
    t.name = name;
    t.source = source;
    t.source_shape = source_shape;
    t.ne.assign(source_shape.rbegin(), source_shape.rend());
    if (vocab_table) t.ne.back() = n_vocab;
    t.type = gemma4_gguf_storage(name, t.ne, out_type);
    out.push_back(std::move(t));
  };
  if (has_full_layer(config)) {
    add(kRopeFreqsName, "", {head_dim_of(config, LayerType::kFull) / 2}, false);
  }
  for (const Gemma4TensorInfo& info : gemma4_hf_checkpoint_layout(config)) {
    if (!info.used) continue;  // K/V of KV-shared layers: llama.cpp would load and ignore them
    std::string name;
    if (info.name.rfind("layers.", 0) == 0) {
      const size_t dot = info.name.find('.', 7);
      const std::string layer = info.name.substr(7, dot - 7), suffix = info.name.substr(dot + 1);
      for (const auto& n : kLayerTensorNames) {
        if (suffix == n.checkpoint) name = "blk." + layer + "." + n.gguf;
      }
    } else {
      for (const auto& n : kGlobalTensorNames) {
        if (info.name == n.checkpoint) name = n.gguf;
      }
    }
    TORCH_CHECK(!name.empty(), "gemma4_gguf_tensors: no GGUF name for ", info.name);
    const bool vocab_table = std::any_of(std::begin(kVocabTables), std::end(kVocabTables),
                                         [&](const char* table) { return info.name == table; });
    add(name, prefix + info.name, info.shape, vocab_table);
  }
  if (has_lm_head) add(kOutputName, kLmHeadKey, {config.vocab_size, config.hidden_size}, true);
  return out;
}

std::vector<float> gemma4_rope_freqs(const Gemma4Config& config) {
  const int64_t d_full = head_dim_of(config, LayerType::kFull);
  // Proportional RoPE rotates the first partial_rotary_factor of the pairs, with frequencies
  // spread over the whole head; a factor of 1e30 makes a pair's angle ~0 (§4, RoPE details).
  const double factor =
      config.rope_full.rope_type == "proportional" ? config.rope_full.partial_rotary_factor : 1.0;
  const auto rotated = static_cast<int64_t>(static_cast<double>(d_full) * factor / 2.0);
  std::vector<float> freqs(d_full / 2, 1e30f);
  std::fill(freqs.begin(), freqs.begin() + std::min<int64_t>(rotated, d_full / 2), 1.0f);
  return freqs;
}

void check_gemma4_gguf_support(const Gemma4Config& config, const std::string& where) {
  const RopeSpec& swa = config.rope_sliding;
  if (swa.rope_type != "default" && (swa.partial_rotary_factor != 1.0 || swa.factor != 1.0)) {
    throw InputError(where + ": sliding layers use \"" + swa.rope_type +
                     "\" RoPE with partial_rotary_factor " +
                     std::to_string(swa.partial_rotary_factor) +
                     "; llama.cpp's gemma4 rotates whole sliding heads (rope_freqs applies to " +
                     "full layers only)");
  }
  if (config.rope_full.factor != 1.0 || swa.factor != 1.0) {
    throw InputError(where + ": RoPE position scaling (factor " +
                     std::to_string(config.rope_full.factor) +
                     ") has no llama.cpp gemma4 equivalent");
  }
}

std::vector<std::string> gemma4_gguf_caveats(const Gemma4Config& config) {
  std::vector<std::string> caveats;
  // llama.cpp's KV reuse is fixed: a shared layer reads layer S-2 when sliding, S-1 when full.
  const int64_t first_shared = config.first_kv_shared_layer();
  for (int64_t i = first_shared; i < config.num_hidden_layers; ++i) {
    const Gemma4LayerSpec& s = config.layers[i];
    const int64_t llama_source = first_shared - (s.type == LayerType::kSliding ? 2 : 1);
    if (s.kv_shared && s.kv_source != llama_source) {
      // Then layer llama_source is of the other attention type, and llama.cpp's KV cache for
      // this type has no entry for it and llama.cpp aborts (seen with llama-cpp-python 0.3.36).
      caveats.push_back(
          "layer " + std::to_string(i) + " reuses the K/V of layer " + std::to_string(s.kv_source) +
          ", but llama.cpp's gemma4 assumes layers " + std::to_string(first_shared - 2) + " and " +
          std::to_string(first_shared - 1) + " are sliding and full and would read layer " +
          std::to_string(llama_source) +
          ": llama.cpp will abort loading this file (other GGUF readers are fine)");
      break;
    }
  }
  if (config.hidden_activation == "gelu") {
    caveats.push_back(
        "hidden_activation is exact \"gelu\"; llama.cpp's gemma4 uses the tanh approximation");
  }
  return caveats;
}

void add_gemma4_gguf_metadata(GgufWriter& w, const Gemma4Config& c, const Gemma4GgufVocab& vocab,
                              GgufOutType out_type, const std::string& model_name) {
  const int64_t L = c.num_hidden_layers;
  w.add_string("general.architecture", kArch);
  w.add_string("general.type", "model");
  w.add_string("general.name", model_name);
  w.add_uint32("general.file_type", gguf_file_type(out_type));
  w.add_uint32("general.quantization_version", 2);  // GGML_QNT_VERSION

  w.add_uint32(arch_key("context_length"), to_u32(c.max_position_embeddings, "context_length"));
  w.add_uint32(arch_key("embedding_length"), to_u32(c.hidden_size, "hidden_size"));
  w.add_uint32(arch_key("block_count"), to_u32(L, "num_hidden_layers"));

  // Per-layer FFN width and KV heads: an array where layers differ (double-wide MLP on E2B's
  // shared layers; global KV heads on 31B/26B full layers), as the converter writes them.
  std::vector<int32_t> ffn, kv_heads;
  std::vector<bool> sliding;
  for (const Gemma4LayerSpec& s : c.layers) {
    ffn.push_back(static_cast<int32_t>(s.intermediate_size));
    kv_heads.push_back(static_cast<int32_t>(s.num_kv_heads));
    sliding.push_back(s.type == LayerType::kSliding);
  }
  const auto uniform = [](const std::vector<int32_t>& v) {
    return std::all_of(v.begin(), v.end(), [&](int32_t x) { return x == v.front(); });
  };
  if (c.use_double_wide_mlp || !uniform(ffn)) {
    w.add_int32_array(arch_key("feed_forward_length"), ffn);
  } else {
    w.add_uint32(arch_key("feed_forward_length"), static_cast<uint32_t>(ffn.front()));
  }
  w.add_uint32(arch_key("attention.head_count"), to_u32(c.num_attention_heads, "heads"));
  if (c.num_global_key_value_heads || !uniform(kv_heads)) {
    w.add_int32_array(arch_key("attention.head_count_kv"), kv_heads);
  } else {
    w.add_uint32(arch_key("attention.head_count_kv"), static_cast<uint32_t>(kv_heads.front()));
  }
  const auto d_full = to_u32(head_dim_of(c, LayerType::kFull), "global_head_dim");
  const auto d_swa = to_u32(head_dim_of(c, LayerType::kSliding), "head_dim");
  w.add_uint32(arch_key("attention.key_length"), d_full);
  w.add_uint32(arch_key("attention.value_length"), d_full);
  w.add_uint32(arch_key("attention.key_length_swa"), d_swa);
  w.add_uint32(arch_key("attention.value_length_swa"), d_swa);
  w.add_float32(arch_key("attention.layer_norm_rms_epsilon"), static_cast<float>(c.rms_norm_eps));
  w.add_uint32(arch_key("attention.sliding_window"), to_u32(c.sliding_window, "sliding_window"));
  // One flag per layer; a scalar would be copied into every layer (§2).
  w.add_bool_array(arch_key("attention.sliding_window_pattern"), sliding);
  w.add_uint32(arch_key("attention.shared_kv_layers"),
               to_u32(c.num_kv_shared_layers, "num_kv_shared_layers"));
  w.add_uint32(arch_key("embedding_length_per_layer_input"),
               to_u32(c.hidden_size_per_layer_input, "hidden_size_per_layer_input"));
  w.add_float32(arch_key("rope.freq_base"), static_cast<float>(c.rope_full.rope_theta));
  w.add_float32(arch_key("rope.freq_base_swa"), static_cast<float>(c.rope_sliding.rope_theta));
  // Full layers rotate over the whole head (rope_freqs masks the unrotated pairs); without the
  // swa count llama.cpp would use the full one on sliding heads and abort (§2).
  w.add_uint32(arch_key("rope.dimension_count"), d_full);
  w.add_uint32(arch_key("rope.dimension_count_swa"), d_swa);
  // llama.cpp defaults to 30 when the key is absent, so "no softcapping" must be written as 0.
  w.add_float32(arch_key("final_logit_softcapping"),
                static_cast<float>(c.final_logit_softcapping.value_or(0.0)));
  if (c.enable_moe_block) {
    w.add_uint32(arch_key("expert_count"), to_u32(c.num_experts, "num_experts"));
    w.add_uint32(arch_key("expert_used_count"), to_u32(c.top_k_experts, "top_k_experts"));
    w.add_uint32(arch_key("expert_feed_forward_length"),
                 to_u32(c.moe_intermediate_size, "moe_intermediate_size"));
  }

  // "gemma4" selects BPE with SentencePiece-style spaces and byte fallback in llama.cpp.
  w.add_string("tokenizer.ggml.model", kArch);
  w.add_string_array("tokenizer.ggml.tokens", vocab.tokens);
  // LlamaHfVocab's placeholder score; BPE ranks merges, not scores.
  w.add_float32_array("tokenizer.ggml.scores", std::vector<float>(vocab.tokens.size(), -1000.0f));
  w.add_int32_array("tokenizer.ggml.token_type", vocab.token_types);
  w.add_string_array("tokenizer.ggml.merges", vocab.merges);
  for (const auto& [key, id] : vocab.special_ids) w.add_uint32(key, id);
  w.add_bool("tokenizer.ggml.add_bos_token", true);  // Gemma always starts with <bos>
  if (vocab.add_eos) w.add_bool("tokenizer.ggml.add_eos_token", *vocab.add_eos);
  w.add_bool("tokenizer.ggml.add_space_prefix", false);
  if (vocab.chat_template) w.add_string("tokenizer.chat_template", *vocab.chat_template);
}

Gemma4GgufExport export_gemma4_gguf(const MergedCheckpoint& checkpoint, const fs::path& out,
                                    GgufOutType out_type) {
  std::error_code ec;
  if (fs::exists(out, ec)) {
    throw InputError(out.string() + ": output file already exists; choose a new path");
  }
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  if (!fs::is_directory(parent, ec)) {
    throw InputError(out.string() + ": folder " + parent.string() + " does not exist");
  }
  const Gemma4Config& config = checkpoint.config();
  const std::string where = checkpoint.dir().string();
  check_gemma4_gguf_support(config, where);
  const Gemma4GgufVocab vocab = read_gemma4_gguf_vocab(checkpoint.dir());
  const auto n_vocab = static_cast<int64_t>(vocab.tokens.size());
  if (n_vocab > config.vocab_size) {
    throw InputError(where + "/tokenizer.json has " + std::to_string(n_vocab) +
                     " tokens but embed_tokens has " + std::to_string(config.vocab_size) +
                     " rows: the tokenizer is not this model's");
  }
  if (config.has_ple() && n_vocab > config.vocab_size_per_layer_input) {
    throw InputError(where + "/tokenizer.json has " + std::to_string(n_vocab) +
                     " tokens but embed_tokens_per_layer has " +
                     std::to_string(config.vocab_size_per_layer_input) +
                     " rows; llama.cpp needs one per token");
  }

  const std::vector<Gemma4GgufTensor> tensors = gemma4_gguf_tensors(
      config, checkpoint.prefix(), n_vocab, out_type, checkpoint.contains(kLmHeadKey));
  for (const Gemma4GgufTensor& t : tensors) {
    if (t.source.empty()) continue;
    if (!checkpoint.contains(t.source)) {
      throw InputError(where + ": tensor \"" + t.source + "\" is missing");
    }
    if (checkpoint.shape(t.source) != t.source_shape) {
      throw InputError(where + ": tensor \"" + t.source + "\" has shape " +
                       shape_text(checkpoint.shape(t.source)) + ", expected " +
                       shape_text(t.source_shape));
    }
  }

  GgufWriter writer;
  fs::path name_path = fs::absolute(checkpoint.dir()).lexically_normal();
  if (name_path.filename().empty()) name_path = name_path.parent_path();
  add_gemma4_gguf_metadata(writer, config, vocab, out_type, name_path.filename().string());
  const std::vector<float> rope_freqs = gemma4_rope_freqs(config);
  for (const Gemma4GgufTensor& t : tensors) {
    writer.add_tensor(t.name, t.ne, t.type, [&checkpoint, &rope_freqs, &t](const auto& emit) {
      torch::NoGradGuard no_grad;
      torch::Tensor v = t.source.empty()
                            ? torch::from_blob(const_cast<float*>(rope_freqs.data()),
                                               {static_cast<int64_t>(rope_freqs.size())})
                            : checkpoint.tensor(t.source);
      const int64_t rows = t.ne.back();
      if (v.size(0) != rows) v = v.narrow(0, 0, rows);  // vocabulary truncation
      emit_encoded(v, t.type, emit);
    });
  }

  AtomicFileWriter file(out, ExistingOutput::kRefuse);  // of two exports, one wins
  writer.write([&file](const void* data, size_t size) { file.write(data, size); });
  file.commit();

  Gemma4GgufExport report;
  report.tensor_count = tensors.size();
  report.file_bytes = writer.file_size();
  report.n_vocab = n_vocab;
  report.caveats = gemma4_gguf_caveats(config);
  return report;
}

}  // namespace gemma
