#include "model/gemma4_config.h"

#include <algorithm>
#include <cctype>
#include <cfloat>
#include <cmath>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/bounded_json.h"
#include "io/input_error.h"

namespace gemma {
using json = nlohmann::json;

namespace {

// `v` as an int64 when it is a JSON integer that fits one (nlohmann stores 2^63 and above as
// unsigned, which get<int64_t>() would wrap to a negative number).
bool json_int64(const json& v, int64_t* out) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned() &&
      v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return false;
  *out = v.get<int64_t>();
  return true;
}

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
      throw InputError(at(key) + ": expected a number, found " +
                       error_excerpt(object_[key].dump()));
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
      throw InputError(at(key) + ": expected true or false, found " +
                       error_excerpt(object_[key].dump()));
    out = object_[key].get<bool>();
  }
  void optional_string(const char* key, std::string& out) const {
    if (!has(key)) return;
    if (!object_[key].is_string())
      throw InputError(at(key) + ": expected a string, found " +
                       error_excerpt(object_[key].dump()));
    out = object_[key].get<std::string>();
  }

 private:
  int64_t int_value(const char* key) const {
    const json& v = object_[key];
    int64_t out = 0;
    if (!json_int64(v, &out)) {
      throw InputError(at(key) + ": expected an integer" +
                       (v.is_number_integer() ? " that fits in int64" : "") + ", found " +
                       error_excerpt(v.dump()));
    }
    return out;
  }

  const json& object_;
  std::string where_;
};

RopeSpec parse_rope(const json& j, const std::string& where, RopeSpec spec) {
  if (!j.is_object())
    throw InputError(where + ": expected an object, found " + error_excerpt(j.dump()));
  FieldReader r(j, where);
  r.optional_string("rope_type", spec.rope_type);
  r.optional_double("rope_theta", spec.rope_theta);
  r.optional_double("partial_rotary_factor", spec.partial_rotary_factor);
  r.optional_double("factor", spec.factor);
  if (spec.rope_type != "default" && spec.rope_type != "proportional") {
    throw InputError(where + ": rope_type \"" + error_excerpt(spec.rope_type) +
                     "\" is not supported (expected \"default\" or \"proportional\")");
  }
  return spec;  // the numbers are checked by finalize()
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

std::string key_at(const std::string& where, const std::string& key) {
  return where + ": key \"" + key + "\"";
}

std::string number_text(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

void require_in_range(int64_t value, int64_t lo, int64_t hi, const std::string& where,
                      const std::string& key) {
  if (value < lo || value > hi) {
    throw InputError(key_at(where, key) + ": expected an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], found " + std::to_string(value));
  }
}

// Finite and > 0 (NaN fails every comparison, so the test is written to reject it).
void require_finite_positive(double value, const std::string& where, const std::string& key) {
  if (!(std::isfinite(value) && value > 0)) {
    throw InputError(key_at(where, key) + ": expected a finite number > 0, found " +
                     number_text(value));
  }
}

void check_rope(const RopeSpec& spec, const std::string& where, const std::string& layer_type) {
  const std::string key = "rope_parameters." + layer_type + ".";
  require_finite_positive(spec.rope_theta, where, key + "rope_theta");
  require_finite_positive(spec.factor, where, key + "factor");
  if (!(spec.partial_rotary_factor > 0 && spec.partial_rotary_factor <= 1)) {
    throw InputError(key_at(where, key + "partial_rotary_factor") +
                     ": expected a number in (0, 1], found " +
                     number_text(spec.partial_rotary_factor));
  }
}

// The product of `factors`, the sizes of one tensor named by `what` (the keys it comes from and
// the tensor), in int64 with checked multiplication; InputError when it overflows or exceeds
// kMaxConfigTensorElements.
void require_tensor_size(std::initializer_list<int64_t> factors, const std::string& where,
                         const std::string& what) {
  int64_t n = 1;
  bool overflow = false;
  for (int64_t f : factors) {
    if (__builtin_mul_overflow(n, f, &n)) {
      overflow = true;
      break;
    }
  }
  if (overflow || n > kMaxConfigTensorElements) {
    throw InputError(where + ": " + what + ": " +
                     (overflow ? std::string("more than int64 holds") : std::to_string(n)) +
                     " elements, more than the " + std::to_string(kMaxConfigTensorElements) +
                     " (2^36) one tensor may have");
  }
}

// The per-layer values' keys, for error messages: where layer `i`'s head_dim and KV heads come
// from.
std::string head_dim_key(const Gemma4Config& c, size_t i) {
  if (c.head_dim_override[i]) return "per_layer_config." + std::to_string(i) + ".head_dim";
  return c.layer_types[i] == LayerType::kFull ? "global_head_dim" : "head_dim";
}

std::string kv_heads_key(const Gemma4Config& c, size_t i) {
  if (c.kv_heads_override[i])
    return "per_layer_config." + std::to_string(i) + ".num_key_value_heads";
  if (c.layer_types[i] == LayerType::kFull && c.attention_k_eq_v && c.num_global_key_value_heads)
    return "num_global_key_value_heads";
  return "num_key_value_heads";
}

}  // namespace

void Gemma4Config::finalize(const std::string& where) {
  // Every bound of the table in gemma4_config.h, before anything is sized from these values.
  require_in_range(hidden_size, 1, kMaxConfigWidth, where, "hidden_size");
  require_in_range(intermediate_size, 1, kMaxConfigWidth, where, "intermediate_size");
  require_in_range(num_hidden_layers, 1, kMaxConfigLayers, where, "num_hidden_layers");
  require_in_range(num_attention_heads, 1, kMaxConfigHeads, where, "num_attention_heads");
  require_in_range(num_key_value_heads, 1, kMaxConfigHeads, where, "num_key_value_heads");
  require_in_range(head_dim, 2, kMaxConfigHeadDim, where, "head_dim");
  require_in_range(global_head_dim, 2, kMaxConfigHeadDim, where, "global_head_dim");
  if (attention_k_eq_v && num_global_key_value_heads) {
    require_in_range(*num_global_key_value_heads, 1, kMaxConfigHeads, where,
                     "num_global_key_value_heads");
  }
  require_in_range(vocab_size, 1, kMaxConfigVocab, where, "vocab_size");
  require_in_range(max_position_embeddings, 1, kMaxConfigPositions, where,
                   "max_position_embeddings");
  require_in_range(sliding_window, 1, kMaxConfigPositions, where, "sliding_window");
  require_in_range(hidden_size_per_layer_input, 0, kMaxConfigWidth, where,
                   "hidden_size_per_layer_input");
  if (has_ple()) {
    require_in_range(vocab_size_per_layer_input, 1, kMaxConfigVocab, where,
                     "vocab_size_per_layer_input");
  }
  require_in_range(num_kv_shared_layers, 0, num_hidden_layers - 1, where, "num_kv_shared_layers");
  if (enable_moe_block) {
    require_in_range(num_experts, 1, kMaxConfigExperts, where, "num_experts");
    require_in_range(top_k_experts, 1, num_experts, where, "top_k_experts");
    require_in_range(moe_intermediate_size, 1, kMaxConfigWidth, where, "moe_intermediate_size");
  }
  // pad fills prompt rows and bos starts them: both are embedding rows. An eos id is only
  // compared with generated ids.
  require_in_range(pad_token_id, 0, vocab_size - 1, where, "pad_token_id");
  require_in_range(bos_token_id, 0, vocab_size - 1, where, "bos_token_id");
  for (int64_t id : eos_token_ids) {
    require_in_range(id, 0, std::numeric_limits<int64_t>::max(), where, "eos_token_id");
  }
  if (!(std::isfinite(rms_norm_eps) && rms_norm_eps >= FLT_MIN && rms_norm_eps <= 1)) {
    throw InputError(key_at(where, "rms_norm_eps") + ": expected a finite number in [" +
                     number_text(FLT_MIN) + ", 1] (nonzero in float32), found " +
                     number_text(rms_norm_eps));
  }
  if (!(std::isfinite(initializer_range) && initializer_range >= 0)) {
    throw InputError(key_at(where, "initializer_range") +
                     ": expected a finite number >= 0, found " + number_text(initializer_range));
  }
  if (final_logit_softcapping)
    require_finite_positive(*final_logit_softcapping, where, "final_logit_softcapping");
  check_rope(rope_sliding, where, "sliding_attention");
  check_rope(rope_full, where, "full_attention");
  if (hidden_activation != "gelu_pytorch_tanh" && hidden_activation != "gelu") {
    throw InputError(where + ": hidden_activation \"" + error_excerpt(hidden_activation) +
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
    if (s.head_dim < 2 || s.head_dim > kMaxConfigHeadDim || s.head_dim % 2 != 0) {
      throw InputError(key_at(layer, head_dim_key(*this, i)) +
                       ": expected an even integer in [2, " + std::to_string(kMaxConfigHeadDim) +
                       "], found " + std::to_string(s.head_dim));
    }
    require_in_range(s.num_kv_heads, 1, kMaxConfigHeads, layer, kv_heads_key(*this, i));
    if (num_attention_heads % s.num_kv_heads != 0) {
      throw InputError(layer + ": num_attention_heads (" + std::to_string(num_attention_heads) +
                       ") is not a multiple of its KV heads (" + std::to_string(s.num_kv_heads) +
                       ", key \"" + kv_heads_key(*this, i) + "\")");
    }
    // Both factors are bounded above, so the product fits int64.
    if (num_attention_heads * s.head_dim > kMaxConfigWidth) {
      throw InputError(layer + ": keys \"num_attention_heads\" * \"" + head_dim_key(*this, i) +
                       "\": a query width of " + std::to_string(num_attention_heads * s.head_dim) +
                       ", more than " + std::to_string(kMaxConfigWidth));
    }
    s.has_v_proj = !(full && attention_k_eq_v);
    s.kv_shared = static_cast<int>(i) >= first_shared;
    s.intermediate_size = intermediate_size * (use_double_wide_mlp && s.kv_shared ? 2 : 1);
  }
  // The checkpoint's tensors (gemma4_hf_checkpoint_layout), each within kMaxConfigTensorElements.
  // K/V projections are no wider than Q (KV heads divide the query heads).
  require_tensor_size({vocab_size, hidden_size}, where,
                      "keys \"vocab_size\" * \"hidden_size\" (embed_tokens, lm_head)");
  bool double_wide = false;
  int64_t widest_q = 0;
  for (const Gemma4LayerSpec& s : layers) {
    double_wide = double_wide || s.intermediate_size != intermediate_size;
    widest_q = std::max(widest_q, num_attention_heads * s.head_dim);
  }
  require_tensor_size({intermediate_size, double_wide ? 2 : 1, hidden_size}, where,
                      double_wide ? "keys 2 * \"intermediate_size\" * \"hidden_size\" (mlp, "
                                    "use_double_wide_mlp)"
                                  : "keys \"intermediate_size\" * \"hidden_size\" (mlp)");
  require_tensor_size({widest_q, hidden_size}, where,
                      "keys \"num_attention_heads\" * head_dim * \"hidden_size\" (q_proj, "
                      "o_proj)");
  if (has_ple()) {
    require_tensor_size(
        {vocab_size_per_layer_input, num_hidden_layers, hidden_size_per_layer_input}, where,
        "keys \"vocab_size_per_layer_input\" * \"num_hidden_layers\" * "
        "\"hidden_size_per_layer_input\" (embed_tokens_per_layer)");
    require_tensor_size({num_hidden_layers, hidden_size_per_layer_input, hidden_size}, where,
                        "keys \"num_hidden_layers\" * \"hidden_size_per_layer_input\" * "
                        "\"hidden_size\" (per_layer_model_projection)");
  }
  if (enable_moe_block) {
    require_tensor_size({num_experts, 2, moe_intermediate_size, hidden_size}, where,
                        "keys \"num_experts\" * 2 * \"moe_intermediate_size\" * \"hidden_size\" "
                        "(experts.gate_up_proj)");
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
  const json root = parse_json_input(json_text, where);
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
    bool ok = e.is_array();
    int64_t id = 0;
    if (json_int64(e, &id)) {
      c.eos_token_ids.push_back(id);
      ok = true;
    } else if (ok) {
      for (const json& x : e) {
        ok = ok && json_int64(x, &id);
        if (ok) c.eos_token_ids.push_back(id);
      }
    }
    if (!ok) throw InputError(r.at("eos_token_id") + ": expected an integer or a list of integers");
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
  // Gemma 4 has no attention-logit softcap and transformers ignores this key; a value that could
  // not be one is still refused rather than read past.
  std::optional<double> attn_softcap;
  r.optional_double("attn_logit_softcapping", attn_softcap);
  if (attn_softcap) require_finite_positive(*attn_softcap, at, "attn_logit_softcapping");
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
        throw InputError(r.at("layer_types") + ": unknown layer type " + error_excerpt(t.dump()) +
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
    require_in_range(c.num_hidden_layers, 1, kMaxConfigLayers, at, "num_hidden_layers");
    c.head_dim_override.resize(c.num_hidden_layers);
    c.kv_heads_override.resize(c.num_hidden_layers);
    for (auto it = plc.begin(); it != plc.end(); ++it) {
      const std::string key_at = r.at("per_layer_config") + "[" + error_excerpt(it.key()) + "]";
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

AttentionImplementation attention_implementation_from_name(const std::string& name,
                                                           const std::string& where) {
  if (name == "sdpa") return AttentionImplementation::kSdpa;
  if (name == "eager") return AttentionImplementation::kEager;
  throw InputError(where + ": expected sdpa or eager, found \"" + name + "\"");
}

}  // namespace gemma
