#include "model/gemma4_config.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/input_error.h"

namespace gemma {
using json = nlohmann::json;

namespace {

// Reads typed fields of one JSON object and names `where.key` in every error.
class FieldReader {
 public:
  FieldReader(const json& object, std::string where) : object_(object), where_(std::move(where)) {}

  bool has(const char* key) const { return object_.contains(key) && !object_[key].is_null(); }
  std::string at(const char* key) const { return where_ + ": key \"" + key + "\""; }

  int64_t required_int(const char* key) const {
    if (!has(key)) throw InputError(at(key) + " is missing (a required field)");
    return int_value(key);
  }
  void optional_int(const char* key, int64_t& out) const {
    if (has(key)) out = int_value(key);
  }
  void optional_int(const char* key, std::optional<int64_t>& out) const {
    if (has(key)) out = int_value(key);
  }
  void optional_double(const char* key, double& out) const {
    if (!has(key)) return;
    if (!object_[key].is_number())
      throw InputError(at(key) + ": expected a number, found " + object_[key].dump());
    out = object_[key].get<double>();
  }
  void optional_double(const char* key, std::optional<double>& out) const {
    if (!has(key)) return;
    double v = 0;
    optional_double(key, v);
    out = v;
  }
  void optional_bool(const char* key, bool& out) const {
    if (!has(key)) return;
    if (!object_[key].is_boolean())
      throw InputError(at(key) + ": expected true or false, found " + object_[key].dump());
    out = object_[key].get<bool>();
  }
  void optional_string(const char* key, std::string& out) const {
    if (!has(key)) return;
    if (!object_[key].is_string())
      throw InputError(at(key) + ": expected a string, found " + object_[key].dump());
    out = object_[key].get<std::string>();
  }

 private:
  int64_t int_value(const char* key) const {
    const json& v = object_[key];
    if (!v.is_number_integer())
      throw InputError(at(key) + ": expected an integer, found " + v.dump());
    return v.get<int64_t>();
  }

  const json& object_;
  std::string where_;
};

RopeSpec parse_rope(const json& j, const std::string& where, RopeSpec spec) {
  if (!j.is_object()) throw InputError(where + ": expected an object, found " + j.dump());
  FieldReader r(j, where);
  r.optional_string("rope_type", spec.rope_type);
  r.optional_double("rope_theta", spec.rope_theta);
  r.optional_double("partial_rotary_factor", spec.partial_rotary_factor);
  r.optional_double("factor", spec.factor);
  if (spec.rope_type != "default" && spec.rope_type != "proportional") {
    throw InputError(where + ": rope_type \"" + spec.rope_type +
                     "\" is not supported (expected \"default\" or \"proportional\")");
  }
  if (spec.rope_theta <= 0) throw InputError(where + ": rope_theta must be positive");
  if (spec.partial_rotary_factor <= 0 || spec.partial_rotary_factor > 1) {
    throw InputError(where + ": partial_rotary_factor must be in (0, 1]");
  }
  return spec;
}

std::string layer_type_name(LayerType t) {
  return t == LayerType::kSliding ? "sliding_attention" : "full_attention";
}

json rope_json(const RopeSpec& r) {
  json j = {{"rope_type", r.rope_type}, {"rope_theta", r.rope_theta}};
  if (r.rope_type == "proportional") j["partial_rotary_factor"] = r.partial_rotary_factor;
  if (r.factor != 1.0) j["factor"] = r.factor;
  return j;
}

void require_positive(int64_t value, const std::string& where, const char* key) {
  if (value <= 0) {
    throw InputError(where + ": key \"" + key + "\" must be a positive integer, found " +
                     std::to_string(value));
  }
}

}  // namespace

void Gemma4Config::finalize(const std::string& where) {
  require_positive(hidden_size, where, "hidden_size");
  require_positive(num_hidden_layers, where, "num_hidden_layers");
  require_positive(num_attention_heads, where, "num_attention_heads");
  require_positive(num_key_value_heads, where, "num_key_value_heads");
  require_positive(head_dim, where, "head_dim");
  require_positive(global_head_dim, where, "global_head_dim");
  require_positive(intermediate_size, where, "intermediate_size");
  require_positive(vocab_size, where, "vocab_size");
  require_positive(sliding_window, where, "sliding_window");
  if (hidden_size_per_layer_input < 0)
    throw InputError(where + ": hidden_size_per_layer_input must be >= 0");
  if (has_ple()) require_positive(vocab_size_per_layer_input, where, "vocab_size_per_layer_input");
  if (hidden_activation != "gelu_pytorch_tanh" && hidden_activation != "gelu") {
    throw InputError(where + ": hidden_activation \"" + hidden_activation +
                     "\" is not supported (expected \"gelu_pytorch_tanh\" or \"gelu\")");
  }
  if (use_bidirectional_attention && *use_bidirectional_attention == "all") {
    throw InputError(where +
                     ": use_bidirectional_attention \"all\" (an encoder) is not supported; "
                     "the text decoder is causal");
  }
  const auto L = static_cast<size_t>(num_hidden_layers);
  if (layer_types.empty()) {
    for (size_t i = 0; i < L; ++i) {
      layer_types.push_back((i + 1) % 6 == 0 ? LayerType::kFull : LayerType::kSliding);
    }
  }
  if (layer_types.size() != L) {
    throw InputError(where + ": key \"layer_types\" has " + std::to_string(layer_types.size()) +
                     " entries but num_hidden_layers is " + std::to_string(L));
  }
  layer_types.back() = LayerType::kFull;  // as transformers: the last layer is always full
  head_dim_override.resize(L);
  kv_heads_override.resize(L);
  if (num_kv_shared_layers < 0 || num_kv_shared_layers >= num_hidden_layers) {
    throw InputError(where + ": num_kv_shared_layers must be in [0, num_hidden_layers)");
  }
  if (enable_moe_block) {
    require_positive(num_experts, where, "num_experts");
    require_positive(top_k_experts, where, "top_k_experts");
    require_positive(moe_intermediate_size, where, "moe_intermediate_size");
    if (top_k_experts > num_experts)
      throw InputError(where + ": top_k_experts exceeds num_experts");
  }

  const int first_shared = static_cast<int>(first_kv_shared_layer());
  layers.assign(L, {});
  for (size_t i = 0; i < L; ++i) {
    Gemma4LayerSpec& s = layers[i];
    s.type = layer_types[i];
    const bool full = s.type == LayerType::kFull;
    s.head_dim = full ? global_head_dim : head_dim;
    s.num_kv_heads = num_key_value_heads;
    if (full && attention_k_eq_v && num_global_key_value_heads)
      s.num_kv_heads = *num_global_key_value_heads;
    if (head_dim_override[i]) s.head_dim = *head_dim_override[i];
    if (kv_heads_override[i]) s.num_kv_heads = *kv_heads_override[i];
    const std::string layer = where + ": layer " + std::to_string(i);
    if (s.head_dim <= 0 || s.head_dim % 2 != 0)
      throw InputError(layer + ": head_dim must be even and positive");
    if (s.num_kv_heads <= 0 || num_attention_heads % s.num_kv_heads != 0) {
      throw InputError(layer + ": num_attention_heads (" + std::to_string(num_attention_heads) +
                       ") is not a multiple of its KV heads (" + std::to_string(s.num_kv_heads) +
                       ")");
    }
    s.has_v_proj = !(full && attention_k_eq_v);
    s.kv_shared = static_cast<int>(i) >= first_shared;
    s.intermediate_size = intermediate_size * (use_double_wide_mlp && s.kv_shared ? 2 : 1);
  }
  for (size_t i = 1; i < L; ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (layers[j].type == layers[i].type && layers[j].head_dim != layers[i].head_dim) {
        throw InputError(where + ": layers " + std::to_string(j) + " and " + std::to_string(i) +
                         " are of one type but have different head_dim (RoPE is per layer type)");
      }
    }
  }
  // §2.5: a shared layer reads the last non-shared layer of its own type.
  for (size_t i = first_shared; i < L; ++i) {
    for (int j = first_shared - 1; j >= 0; --j) {
      if (layers[j].type == layers[i].type) {
        layers[i].kv_source = j;
        break;
      }
    }
    if (layers[i].kv_source < 0) {
      throw InputError(where + ": KV-shared layer " + std::to_string(i) + " (" +
                       layer_type_name(layers[i].type) +
                       ") has no earlier non-shared layer of the same type to read K/V from");
    }
    Gemma4LayerSpec& src = layers[layers[i].kv_source];
    src.stores_kv = true;
    if (src.head_dim != layers[i].head_dim) {
      throw InputError(where + ": KV-shared layer " + std::to_string(i) + " has head_dim " +
                       std::to_string(layers[i].head_dim) + " but its source layer has " +
                       std::to_string(src.head_dim));
    }
  }
}

Gemma4Config parse_gemma4_config(const std::string& json_text, const std::string& where) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    throw InputError(where + ": not valid JSON: " + e.what());
  }
  if (!root.is_object()) throw InputError(where + ": expected a JSON object");
  std::string at = where;
  const json* text = &root;
  if (root.contains("text_config")) {
    if (!root["text_config"].is_object())
      throw InputError(where + ": key \"text_config\" is not an object");
    text = &root["text_config"];
    at = where + " text_config";
  }
  FieldReader r(*text, at);
  Gemma4Config c;
  c.hidden_size = r.required_int("hidden_size");
  c.num_hidden_layers = r.required_int("num_hidden_layers");
  c.num_attention_heads = r.required_int("num_attention_heads");
  c.num_key_value_heads = r.required_int("num_key_value_heads");
  c.head_dim = r.required_int("head_dim");
  c.intermediate_size = r.required_int("intermediate_size");
  c.vocab_size = r.required_int("vocab_size");
  r.optional_int("global_head_dim", c.global_head_dim);
  r.optional_int("num_global_key_value_heads", c.num_global_key_value_heads);
  r.optional_bool("attention_k_eq_v", c.attention_k_eq_v);
  r.optional_string("hidden_activation", c.hidden_activation);
  r.optional_int("max_position_embeddings", c.max_position_embeddings);
  r.optional_double("rms_norm_eps", c.rms_norm_eps);
  r.optional_double("initializer_range", c.initializer_range);
  r.optional_int("pad_token_id", c.pad_token_id);
  r.optional_int("bos_token_id", c.bos_token_id);
  if (r.has("eos_token_id")) {
    const json& e = (*text)["eos_token_id"];
    c.eos_token_ids.clear();
    if (e.is_number_integer()) {
      c.eos_token_ids.push_back(e.get<int64_t>());
    } else if (e.is_array() && std::all_of(e.begin(), e.end(),
                                           [](const json& x) { return x.is_number_integer(); })) {
      for (const json& x : e) c.eos_token_ids.push_back(x.get<int64_t>());
    } else {
      throw InputError(r.at("eos_token_id") + ": expected an integer or a list of integers");
    }
  }
  // tie_word_embeddings lives at top level in the multimodal form, in text_config in the other.
  r.optional_bool("tie_word_embeddings", c.tie_word_embeddings);
  FieldReader(root, where).optional_bool("tie_word_embeddings", c.tie_word_embeddings);
  if (r.has("attention_bias")) {
    bool bias = false;
    r.optional_bool("attention_bias", bias);
    if (bias)
      throw InputError(r.at("attention_bias") +
                       ": true is not supported (no Gemma 4 model uses it)");
  }
  r.optional_int("sliding_window", c.sliding_window);
  r.optional_double("final_logit_softcapping", c.final_logit_softcapping);
  if (r.has("use_bidirectional_attention")) {
    std::string mode;
    r.optional_string("use_bidirectional_attention", mode);
    c.use_bidirectional_attention = mode;
  }
  r.optional_int("vocab_size_per_layer_input", c.vocab_size_per_layer_input);
  r.optional_int("hidden_size_per_layer_input", c.hidden_size_per_layer_input);
  r.optional_int("num_kv_shared_layers", c.num_kv_shared_layers);
  r.optional_bool("use_double_wide_mlp", c.use_double_wide_mlp);
  r.optional_bool("enable_moe_block", c.enable_moe_block);
  r.optional_int("num_experts", c.num_experts);
  r.optional_int("top_k_experts", c.top_k_experts);
  r.optional_int("moe_intermediate_size", c.moe_intermediate_size);

  if (r.has("layer_types")) {
    const json& lt = (*text)["layer_types"];
    if (!lt.is_array()) throw InputError(r.at("layer_types") + ": expected a list");
    for (const json& t : lt) {
      if (t == "sliding_attention") {
        c.layer_types.push_back(LayerType::kSliding);
      } else if (t == "full_attention") {
        c.layer_types.push_back(LayerType::kFull);
      } else {
        throw InputError(r.at("layer_types") + ": unknown layer type " + t.dump() +
                         " (expected \"sliding_attention\" or \"full_attention\")");
      }
    }
  }
  if (r.has("rope_parameters")) {
    const json& rp = (*text)["rope_parameters"];
    if (!rp.is_object()) throw InputError(r.at("rope_parameters") + ": expected an object");
    if (rp.contains("sliding_attention")) {
      c.rope_sliding = parse_rope(rp["sliding_attention"],
                                  r.at("rope_parameters") + ".sliding_attention", c.rope_sliding);
    }
    if (rp.contains("full_attention")) {
      c.rope_full = parse_rope(rp["full_attention"], r.at("rope_parameters") + ".full_attention",
                               c.rope_full);
    }
  }
  if (r.has("per_layer_config")) {
    // transformers ≥ 5.15 form: {"<layer index>": {"head_dim": .., "num_key_value_heads": ..}}; the
    // flat global_* keys are not written then and full layers carry their head_dim here.
    const json& plc = (*text)["per_layer_config"];
    if (!plc.is_object()) throw InputError(r.at("per_layer_config") + ": expected an object");
    c.head_dim_override.resize(c.num_hidden_layers);
    c.kv_heads_override.resize(c.num_hidden_layers);
    for (auto it = plc.begin(); it != plc.end(); ++it) {
      const std::string key_at = r.at("per_layer_config") + "[" + it.key() + "]";
      int64_t idx = -1;
      try {
        size_t used = 0;
        idx = std::stoll(it.key(), &used);
        if (used != it.key().size()) idx = -1;
      } catch (const std::exception&) {
        idx = -1;
      }
      if (idx < 0 || idx >= c.num_hidden_layers) throw InputError(key_at + ": not a layer index");
      FieldReader lr(*it, key_at);
      if (!it->is_object()) throw InputError(key_at + ": expected an object");
      std::optional<int64_t> hd, kv;
      lr.optional_int("head_dim", hd);
      lr.optional_int("num_key_value_heads", kv);
      c.head_dim_override[idx] = hd;
      c.kv_heads_override[idx] = kv;
    }
  }
  c.finalize(at);
  return c;
}

Gemma4Config load_gemma4_config(const std::string& path) {
  return parse_gemma4_config(read_text_file(path), path);
}

std::string gemma4_config_to_json(const Gemma4Config& c, bool text_only, const std::string& dtype) {
  json t;
  t["model_type"] = "gemma4_text";
  t["vocab_size"] = c.vocab_size;
  t["hidden_size"] = c.hidden_size;
  t["intermediate_size"] = c.intermediate_size;
  t["num_hidden_layers"] = c.num_hidden_layers;
  t["num_attention_heads"] = c.num_attention_heads;
  t["num_key_value_heads"] = c.num_key_value_heads;
  t["head_dim"] = c.head_dim;
  t["global_head_dim"] = c.global_head_dim;
  t["num_global_key_value_heads"] =
      c.num_global_key_value_heads ? json(*c.num_global_key_value_heads) : json(nullptr);
  t["attention_k_eq_v"] = c.attention_k_eq_v;
  t["hidden_activation"] = c.hidden_activation;
  t["max_position_embeddings"] = c.max_position_embeddings;
  t["rms_norm_eps"] = c.rms_norm_eps;
  t["initializer_range"] = c.initializer_range;
  t["pad_token_id"] = c.pad_token_id;
  t["bos_token_id"] = c.bos_token_id;
  t["eos_token_id"] =
      c.eos_token_ids.size() == 1 ? json(c.eos_token_ids[0]) : json(c.eos_token_ids);
  t["attention_bias"] = false;
  t["attention_dropout"] = 0.0;
  t["sliding_window"] = c.sliding_window;
  json types = json::array();
  for (LayerType lt : c.layer_types) types.push_back(layer_type_name(lt));
  t["layer_types"] = types;
  t["rope_parameters"] = {{"sliding_attention", rope_json(c.rope_sliding)},
                          {"full_attention", rope_json(c.rope_full)}};
  t["final_logit_softcapping"] =
      c.final_logit_softcapping ? json(*c.final_logit_softcapping) : json(nullptr);
  t["use_bidirectional_attention"] =
      c.use_bidirectional_attention ? json(*c.use_bidirectional_attention) : json(nullptr);
  t["vocab_size_per_layer_input"] = c.vocab_size_per_layer_input;
  t["hidden_size_per_layer_input"] = c.hidden_size_per_layer_input;
  t["num_kv_shared_layers"] = c.num_kv_shared_layers;
  t["use_double_wide_mlp"] = c.use_double_wide_mlp;
  t["enable_moe_block"] = c.enable_moe_block;
  t["num_experts"] = c.enable_moe_block ? json(c.num_experts) : json(nullptr);
  t["top_k_experts"] = c.enable_moe_block ? json(c.top_k_experts) : json(nullptr);
  t["moe_intermediate_size"] = c.enable_moe_block ? json(c.moe_intermediate_size) : json(nullptr);
  t["use_cache"] = true;
  t["dtype"] = dtype;

  json root;
  if (text_only) {
    root = t;
    root["architectures"] = {"Gemma4ForCausalLM"};
    root["tie_word_embeddings"] = c.tie_word_embeddings;
  } else {
    t["tie_word_embeddings"] = c.tie_word_embeddings;
    root["architectures"] = {"Gemma4ForConditionalGeneration"};
    root["model_type"] = "gemma4";
    root["text_config"] = t;
    root["tie_word_embeddings"] = c.tie_word_embeddings;
    root["dtype"] = dtype;
    root["eos_token_id"] = t["eos_token_id"];
  }
  return root.dump(2) + "\n";
}

}  // namespace gemma
