#include "peft/peft_adapter_config.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "io/bounded_json.h"
#include "io/input_error.h"
#include "io/string_match.h"
#include "peft/target_regex.h"

namespace gemma {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The largest LoRA rank read (ranks past a few hundred are rare; PEFT sets no bound).
constexpr int64_t kMaxPeftRank = 65536;

std::string json_text(const json& value) {
  return error_excerpt(value.dump(-1, ' ', true, json::error_handler_t::replace));
}

// How read_peft_adapter_config treats a key of PEFT 0.21.2's LoraConfig (peft/tuners/lora/
// config.py) or PeftConfig (peft/config.py) that it does not read itself.
enum class KeyRule {
  kAnyValue,     // bookkeeping, or read only while PEFT creates fresh adapter weights, which the
                 // stored ones then replace
  kNullOrFalse,  // a switch gemma-train does not implement: only off passes
  kNullOrEmpty,  // a list or mapping PEFT tests for truth: empty is the same as absent
  kNull,         // PEFT tests `is not None`: any value, even {}, turns the feature on
};

struct OtherKey {
  const char* name;
  KeyRule rule;
  const char* why;  // the refusal's reason: what gemma-train does instead
};

constexpr OtherKey kOtherKeys[] = {
    {"auto_mapping", KeyRule::kAnyValue, ""},
    {"base_model_name_or_path", KeyRule::kAnyValue, ""},
    {"inference_mode", KeyRule::kAnyValue, ""},
    {"peft_version", KeyRule::kAnyValue, ""},
    {"revision", KeyRule::kAnyValue, ""},
    {"task_type", KeyRule::kAnyValue, ""},
    {"runtime_config", KeyRule::kAnyValue, ""},  // runtime only; LoraConfig.to_dict drops it
    // Initialisation settings (init_lora_weights decides which schemes pass).
    {"corda_config", KeyRule::kAnyValue, ""},
    {"eva_config", KeyRule::kAnyValue, ""},
    {"loftq_config", KeyRule::kAnyValue, ""},
    {"lora_ga_config", KeyRule::kAnyValue, ""},
    // Settings of features that stay off unless their own key (refused below) turns them on.
    {"megatron_core", KeyRule::kAnyValue, ""},
    {"qalora_group_size", KeyRule::kAnyValue, ""},
    // For GPT-2's Conv1D only: PEFT sets it back to false on nn.Linear (lora/layer.py,
    // dispatch_default) and bitsandbytes' Linear4bit (lora/bnb.py), which every Gemma 4
    // projection is, so the stored weights are [r, in] and [out, r] either way.
    {"fan_in_fan_out", KeyRule::kAnyValue, ""},
    {"alpha_pattern", KeyRule::kNullOrEmpty, "gemma-train uses one lora_alpha for every module"},
    {"rank_pattern", KeyRule::kNullOrEmpty, "gemma-train uses one r for every module"},
    {"exclude_modules", KeyRule::kNullOrEmpty,
     "gemma-train adapts every module target_modules matches"},
    {"layers_to_transform", KeyRule::kNullOrEmpty,
     "gemma-train applies the adapter to every matching layer"},
    {"layers_pattern", KeyRule::kNullOrEmpty,
     "gemma-train applies the adapter to every matching layer"},
    {"modules_to_save", KeyRule::kNullOrEmpty,
     "gemma-train trains and saves adapters only, not full copies of modules"},
    {"target_parameters", KeyRule::kNullOrEmpty, "gemma-train adapts modules, not parameters"},
    {"layer_replication", KeyRule::kNullOrEmpty, "gemma-train does not replicate layers"},
    {"megatron_config", KeyRule::kNullOrEmpty, "gemma-train has no Megatron parallel layers"},
    {"lora_bias", KeyRule::kNullOrFalse, "gemma-train's lora_B has no bias"},
    {"use_qalora", KeyRule::kNullOrFalse, "QALoRA is not implemented"},
    {"ensure_weight_tying", KeyRule::kNullOrFalse, "gemma-train adapts no tied embeddings"},
    {"trainable_token_indices", KeyRule::kNull, "gemma-train trains no token embeddings"},
    {"alora_invocation_tokens", KeyRule::kNull, "Activated LoRA is not implemented"},
    {"arrow_config", KeyRule::kNull, "the Arrow LoRA variant is not implemented"},
    {"kasa_config", KeyRule::kNull, "the KaSA LoRA variant is not implemented"},
    {"monteclora_config", KeyRule::kNull, "the MonteCLoRA variant is not implemented"},
    {"use_bdlora", KeyRule::kNull, "the BD-LoRA variant is not implemented"},
    {"velora_config", KeyRule::kNull, "the VeLoRA variant is not implemented"},
};

bool is_null_or_empty(const json& value) {
  // (json::empty() is false for every string: a string is one value.)
  return value.is_null() || ((value.is_array() || value.is_object()) && value.empty()) ||
         (value.is_string() && value.get_ref<const std::string&>().empty());
}

// A key read_peft_adapter_config does not read itself: passes when PEFT would do nothing with it
// that gemma-train does not do, else an InputError naming it.
void check_other_key(const std::string& key, const json& value, const std::string& config_path) {
  for (const OtherKey& k : kOtherKeys) {
    if (key != k.name) continue;
    bool passes = true;
    switch (k.rule) {
      case KeyRule::kAnyValue:
        break;
      case KeyRule::kNullOrFalse:
        passes = value.is_null() || value == false;
        break;
      case KeyRule::kNullOrEmpty:
        passes = is_null_or_empty(value);
        break;
      case KeyRule::kNull:
        passes = value.is_null();
        break;
    }
    if (passes) return;
    throw InputError(config_path + ": key \"" + key + "\" is not supported (" + k.why +
                     "); remove it or set it to " +
                     (k.rule == KeyRule::kNullOrFalse ? "false" : "null"));
  }
  // Not a PEFT 0.21.2 key: PEFT itself warns and ignores it, but a newer PEFT may have meant
  // something by it. Off-looking values (null, false, empty) pass.
  if (is_null_or_empty(value) || value == false) return;
  throw InputError(config_path + ": key \"" + error_excerpt(key) + "\" (" + json_text(value) +
                   ") is not a PEFT 0.21.2 LoraConfig key, so gemma-train cannot tell what it "
                   "changes; remove it or set it to null");
}

// init_lora_weights: only how PEFT draws fresh A and B, which the stored ones replace; except the
// schemes PEFT runs again when it loads an adapter and that rewrite the base weights
// (W - s·B₀A₀ for PiSSA, OLoRA, CorDA; the quantized residual for LoftQ), and MiCA, which
// freezes lora_B in training. Returns the boolean form (true for every named scheme).
bool read_init_lora_weights(const json& value, const std::string& config_path) {
  if (value.is_boolean()) return value.get<bool>();
  if (value.is_null()) return true;  // PEFT: reset_lora_parameters is skipped; no effect here
  const std::string where = config_path + ": key \"init_lora_weights\" ";
  if (!value.is_string()) throw InputError(where + "must be true, false or a scheme name");
  const std::string scheme = value.get<std::string>();
  for (const char* ok : {"gaussian", "eva", "orthogonal", "lora_ga"}) {
    if (scheme == ok) return true;
  }
  const std::string lower = ascii_lower(scheme);
  if (scheme.rfind("pissa", 0) == 0 || scheme.rfind("corda", 0) == 0 || lower == "olora" ||
      scheme == "loftq") {
    throw InputError(where + json_text(value) +
                     " is not supported (PEFT runs this initialisation again when it loads the "
                     "adapter and rewrites the base weights with it); save the adapter with "
                     "init_lora_weights true, as PEFT's docs for these schemes say");
  }
  if (lower == "mica")
    throw InputError(where + "\"mica\" is not supported (MiCA keeps lora_B frozen in training)");
  throw InputError(where + json_text(value) + " is not a scheme PEFT 0.21.2 knows");
}

// target_modules: a list of names (a path equal to one or ending in "." + one) or one regular
// expression the whole path must match (peft/utils/other.py, match_target_against_key:
// re.fullmatch).
void read_target_modules(const json& value, const std::string& config_path, AdapterSpec& spec) {
  const std::string where = config_path + ": key \"target_modules\"";
  if (value.is_string()) {
    const std::string pattern = value.get<std::string>();
    if (ascii_lower(pattern) == "all-linear")
      throw InputError(where + " is " + json_text(value) +
                       ", which PEFT expands to module names when it creates an adapter; list the "
                       "names");
    if (pattern.empty()) throw InputError(where + " is an empty regular expression");
    check_target_regex(pattern, where);
    spec.target_regex = pattern;
    spec.target_modules.clear();
    return;
  }
  if (value.is_null())
    throw InputError(where + " is null (PEFT would pick its default for the architecture); " +
                     "list the module names");
  if (!value.is_array()) throw InputError(where + " must be a list of names or a string");
  spec.target_modules.clear();
  for (const json& name : value) {
    if (!name.is_string())
      throw InputError(where + ": " + json_text(name) + " is not a module name");
    spec.target_modules.push_back(name.get<std::string>());
  }
}

}  // namespace

AdapterSpec read_peft_adapter_config(const fs::path& dir) {
  const std::string config_path = (dir / kPeftAdapterConfigFile).string();
  const json config = parse_json_input(read_text_file(dir / kPeftAdapterConfigFile), config_path);
  if (!config.is_object() || config.value("peft_type", json()) != "LORA") {
    throw InputError(config_path + ": peft_type is not \"LORA\"");
  }
  const auto fail = [&](const std::string& key, const std::string& message) {
    throw InputError(config_path + ": key \"" + key + "\" " + message);
  };
  const auto found = [](const json& v) { return json_text(v); };

  AdapterSpec spec;
  // PEFT's LoraConfig defaults where a key is missing: r 8, lora_alpha 8, lora_dropout 0.
  spec.lora.r = 8;
  spec.lora.alpha = 8.0;
  spec.lora.dropout = 0.0;
  spec.lora.init_lora_weights = true;
  for (const auto& [key, value] : config.items()) {
    if (key == "peft_type") continue;  // checked above
    if (key == "r") {
      if (!value.is_number_integer() || value.get<int64_t>() < 1 ||
          value.get<int64_t>() > kMaxPeftRank)
        fail(key, "must be an integer from 1 to " + std::to_string(kMaxPeftRank) + ", found " +
                      found(value));
      spec.lora.r = value.get<int64_t>();
    } else if (key == "lora_alpha") {
      if (!value.is_number() || !std::isfinite(value.get<double>()))
        fail(key, "must be a finite number, found " + found(value));
      spec.lora.alpha = value.get<double>();
    } else if (key == "lora_dropout") {
      // PEFT builds nn.Dropout(p), which takes 0 <= p <= 1.
      if (!value.is_number() || !(value.get<double>() >= 0 && value.get<double>() <= 1))
        fail(key, "must be a probability from 0 to 1, found " + found(value));
      spec.lora.dropout = value.get<double>();
    } else if (key == "use_rslora" || key == "use_dora") {
      if (!value.is_null() && !value.is_boolean())
        fail(key, "must be true or false, found " + found(value));
      (key == "use_rslora" ? spec.lora.use_rslora : spec.lora.use_dora) =
          value.is_boolean() && value.get<bool>();
    } else if (key == "bias") {
      if (value != "none")
        fail(key,
             "is " + found(value) +
                 ", which is not supported (gemma-train adapts no biases); set it to \"none\"");
    } else if (key == "init_lora_weights") {
      spec.lora.init_lora_weights = read_init_lora_weights(value, config_path);
    } else if (key == "target_modules") {
      read_target_modules(value, config_path, spec);
    } else {
      check_other_key(key, value, config_path);
    }
  }
  if (!config.contains("target_modules"))
    fail("target_modules",
         "is missing (PEFT would pick its default for the architecture); list the module names");
  return spec;
}

std::string peft_adapter_config_text(const AdapterSpec& spec, const std::string& base_model_name) {
  json targets;
  if (!spec.target_regex.empty()) {
    targets = spec.target_regex;
  } else {
    std::set<std::string> names(spec.target_modules.begin(), spec.target_modules.end());
    targets = json(std::vector<std::string>(names.begin(), names.end()));
  }
  // Only long-standing keys (older PEFT rejects unknown ones); json sorts them, as PEFT writes
  // them.
  const json config = {{"alpha_pattern", json::object()},
                       {"base_model_name_or_path", base_model_name},
                       {"bias", "none"},
                       {"fan_in_fan_out", false},
                       {"inference_mode", true},
                       {"init_lora_weights", spec.lora.init_lora_weights},
                       {"layers_pattern", nullptr},
                       {"layers_to_transform", nullptr},
                       {"lora_alpha", spec.lora.alpha},
                       {"lora_dropout", spec.lora.dropout},
                       {"modules_to_save", nullptr},
                       {"peft_type", "LORA"},
                       {"r", spec.lora.r},
                       {"rank_pattern", json::object()},
                       {"revision", nullptr},
                       {"target_modules", targets},
                       {"task_type", "CAUSAL_LM"},
                       {"use_dora", spec.lora.use_dora},
                       {"use_rslora", spec.lora.use_rslora}};
  return config.dump(2) + "\n";
}

}  // namespace gemma
