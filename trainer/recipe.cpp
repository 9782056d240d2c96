#include "trainer/recipe.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <functional>
#include <set>
#include <system_error>

#include <yaml-cpp/yaml.h>

#include "io/input_error.h"
#include "io/string_match.h"
#include "peft/target_regex.h"

namespace gemma {
namespace {

constexpr std::uintmax_t kMaxRecipeBytes = 1 << 20;
constexpr const char* kSectionNames[] = {"model", "peft", "data", "training", "export"};
constexpr const char* kSectionList = "model, peft, data, training, export";

// ---- Closed sets: the names a recipe spells each choice with (style.md §8). ----

template <typename E>
struct Choice {
  const char* name;
  E value;
};

constexpr Choice<RecipeDtype> kModelDtypes[] = {{"auto", RecipeDtype::kAuto},
                                                {"float32", RecipeDtype::kFloat32},
                                                {"bfloat16", RecipeDtype::kBfloat16}};
constexpr Choice<RecipeDtype> kFloatDtypes[] = {{"float32", RecipeDtype::kFloat32},
                                                {"bfloat16", RecipeDtype::kBfloat16}};
constexpr Choice<RecipeDevice> kDevices[] = {{"cpu", RecipeDevice::kCpu},
                                             {"cuda", RecipeDevice::kCuda}};
constexpr Choice<AttentionImplementation> kAttentionImplementations[] = {
    {"sdpa", AttentionImplementation::kSdpa}, {"eager", AttentionImplementation::kEager}};
constexpr Choice<Bnb4bitQuantType> kQuantTypes[] = {{"nf4", Bnb4bitQuantType::kNf4}};
constexpr Choice<DataKind> kDataKinds[] = {{"auto", DataKind::kAuto},
                                           {"text", DataKind::kText},
                                           {"chat", DataKind::kChat},
                                           {"completion", DataKind::kCompletion},
                                           {"preference", DataKind::kPreference},
                                           {"kto", DataKind::kKto}};
constexpr Choice<TrainingMethod> kMethods[] = {
    {"sft", TrainingMethod::kSft}, {"dpo", TrainingMethod::kDpo}, {"kto", TrainingMethod::kKto}};
constexpr Choice<LrSchedulerType> kSchedulers[] = {
    {"linear", LrSchedulerType::kLinear},
    {"cosine", LrSchedulerType::kCosine},
    {"constant", LrSchedulerType::kConstant},
    {"constant_with_warmup", LrSchedulerType::kConstantWithWarmup}};
constexpr Choice<OptimizerName> kOptimizers[] = {
    {"adamw_torch", OptimizerName::kAdamwTorch},
    {"adamw_torch_fused", OptimizerName::kAdamwTorchFused},
    {"adamw_8bit", OptimizerName::kAdamw8bit},
    {"paged_adamw_8bit", OptimizerName::kPagedAdamw8bit},
    {"paged_adamw_32bit", OptimizerName::kPagedAdamw32bit}};
constexpr Choice<TruncationMode> kTruncationModes[] = {{"keep_start", TruncationMode::kKeepStart},
                                                       {"keep_end", TruncationMode::kKeepEnd}};
constexpr Choice<SamplingStrategy> kSamplingStrategies[] = {
    {"random", SamplingStrategy::kRandom}, {"sequential", SamplingStrategy::kSequential}};
constexpr Choice<RefModel> kRefModels[] = {{"auto", RefModel::kAuto}, {"base", RefModel::kBase}};
constexpr Choice<PackingStrategy> kPackingStrategies[] = {{"bfd", PackingStrategy::kBfd},
                                                          {"wrapped", PackingStrategy::kWrapped}};
constexpr Choice<LossNormalization> kLossNormalizations[] = {
    {"window_tokens", LossNormalization::kWindowTokens},
    {"micro_batch", LossNormalization::kMicroBatch}};
constexpr Choice<EvalStrategy> kEvalStrategies[] = {
    {"no", EvalStrategy::kNo}, {"steps", EvalStrategy::kSteps}, {"epoch", EvalStrategy::kEpoch}};
// GGUF's names come from export/'s own table (gguf_out_type_name), the one place they live.
const Choice<GgufOutType> kGgufDtypes[] = {
    {gguf_out_type_name(GgufOutType::kF32), GgufOutType::kF32},
    {gguf_out_type_name(GgufOutType::kF16), GgufOutType::kF16},
    {gguf_out_type_name(GgufOutType::kBF16), GgufOutType::kBF16},
    {gguf_out_type_name(GgufOutType::kQ8_0), GgufOutType::kQ8_0}};

// training.loss_type per method, as the pinned configs accept them: SFTConfig (`choices`, less
// the deprecated chunked_nll), DPOConfig's help text, KTOConfig (`choices`).
const std::vector<std::string> kSftLossTypes = {"nll", "dft"};
const std::vector<std::string> kDpoLossTypes = {
    "sigmoid",  "hinge",    "ipo",       "exo_pair", "nca_pair",
    "robust",   "bco_pair", "sppo_hard", "aot",      "aot_unpaired",
    "apo_zero", "apo_down", "discopop",  "sft",      "sigmoid_norm"};
const std::vector<std::string> kKtoLossTypes = {"kto", "apo_zero_unpaired"};

template <typename E, size_t N>
std::string choice_list(const Choice<E> (&table)[N]) {
  std::string s;
  for (size_t i = 0; i < N; ++i)
    s += (i ? (i + 1 == N ? " or " : ", ") : "") + std::string(table[i].name);
  return s;
}

template <typename E, size_t N>
const char* choice_name(const Choice<E> (&table)[N], E value) {
  for (const Choice<E>& c : table)
    if (c.value == value) return c.name;
  return "?";
}

std::string join(const std::vector<std::string>& names, const char* sep = ", ") {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) s += (i ? sep : "") + names[i];
  return s;
}

// ---- Where things are, and what was found, as messages print them. ----

std::string mark_text(const std::string& file, const YAML::Mark& mark) {
  if (mark.is_null()) return file;
  return file + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
}

std::string quoted(const std::string& s) {
  constexpr size_t kShown = 80;
  return "\"" + (s.size() > kShown ? s.substr(0, kShown) + "..." : s) + "\"";
}

std::string found_text(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return quoted(node.Scalar());
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    default:
      return "null";
  }
}

// The shortest text that reads back to the same double; a whole number keeps a ".0".
std::string number_text(double x) {
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), x);
  std::string s(buf, ec == std::errc() ? end : buf);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

// A value being read: its node, where it stands and its key path.
struct Value {
  const YAML::Node& node;
  std::string where;  // "recipe.yaml:12:18" or "--set training.learning_rate=abc"
  std::string key;    // "training.learning_rate"
};

[[noreturn]] void refuse(const Value& v, const std::string& expected) {
  throw InputError(v.where + ": " + v.key + ": expected " + expected + ", found " +
                   found_text(v.node));
}

Value element(const Value& list, const YAML::Node& node, size_t i, const std::string& file) {
  // Inside the file an element has its own mark; a --set keeps the whole override as its place.
  const bool in_file = !file.empty() && !node.Mark().is_null();
  return Value{node, in_file ? mark_text(file, node.Mark()) : list.where,
               list.key + "[" + std::to_string(i) + "]"};
}

// ---- Typed readers: one per value type, shared by the file and --set. ----

bool parse_bool(const std::string& text, bool& out) {
  const std::string s = ascii_lower(text);
  if (s == "true" || s == "yes" || s == "on") return out = true, true;
  if (s == "false" || s == "no" || s == "off") return out = false, true;
  return false;
}

void read_value(const Value& v, bool& out) {
  if (!v.node.IsScalar() || !parse_bool(v.node.Scalar(), out)) refuse(v, "true or false");
}

void read_value(const Value& v, int64_t& out) {
  if (v.node.IsScalar()) {
    std::string s = v.node.Scalar();
    if (!s.empty() && s[0] == '+') s.erase(0, 1);
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (!s.empty() && ec == std::errc() && end == s.data() + s.size()) return;
  }
  refuse(v, "an integer");
}

void read_value(const Value& v, double& out) {
  if (v.node.IsScalar()) {
    std::string s = v.node.Scalar();
    if (!s.empty() && s[0] == '+') s.erase(0, 1);
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (!s.empty() && ec == std::errc() && end == s.data() + s.size() && std::isfinite(out)) return;
  }
  refuse(v, "a number");
}

void read_value(const Value& v, std::string& out) {
  if (!v.node.IsScalar()) refuse(v, "a string");
  out = v.node.Scalar();
}

template <typename T>
void read_value(const Value& v, std::optional<T>& out) {
  if (v.node.IsNull()) {
    out.reset();
    return;
  }
  T inner{};
  read_value(v, inner);
  out = inner;
}

// One name or a list of names (paths, module names, loss types); null is the empty list.
std::vector<std::string> read_names(const Value& v, const std::string& file, const char* what) {
  if (v.node.IsNull()) return {};
  if (v.node.IsScalar()) return {v.node.Scalar()};
  if (!v.node.IsSequence()) refuse(v, std::string(what) + " or a list of them");
  std::vector<std::string> names;
  for (size_t i = 0; i < v.node.size(); ++i) {
    const YAML::Node item = v.node[i];
    const Value e = element(v, item, i, file);
    if (!item.IsScalar()) refuse(e, what);
    names.push_back(item.Scalar());
  }
  return names;
}

template <typename E, size_t N>
E read_choice(const Value& v, const Choice<E> (&table)[N]) {
  if (v.node.IsScalar())
    for (const Choice<E>& c : table)
      if (v.node.Scalar() == c.name) return c.value;
  refuse(v, "one of " + choice_list(table));
}

// ---- Typed writers: the YAML text print_recipe gives each value. ----

std::string yaml_quoted(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      static const char* kHex = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string yaml_text(bool b) { return b ? "true" : "false"; }
std::string yaml_text(int64_t i) { return std::to_string(i); }
std::string yaml_text(double x) { return number_text(x); }
std::string yaml_text(const std::string& s) { return yaml_quoted(s); }
std::string yaml_text(const std::vector<std::string>& names) {
  std::string s = "[";
  for (size_t i = 0; i < names.size(); ++i) s += (i ? ", " : "") + yaml_quoted(names[i]);
  return s + "]";
}
template <typename T>
std::string yaml_text(const std::optional<T>& value) {
  return value ? yaml_text(*value) : "null";
}

// ---- The key table: every key of every section, how to read it and how to print it. ----

// Which training methods a key belongs to (TRL has it on SFTConfig, DPOConfig, KTOConfig).
enum : unsigned { kSft = 1, kDpo = 2, kKto = 4, kAllMethods = kSft | kDpo | kKto };

unsigned method_bit(TrainingMethod m) {
  return m == TrainingMethod::kSft ? kSft : m == TrainingMethod::kDpo ? kDpo : kKto;
}

struct Field {
  std::string section;
  std::string name;
  unsigned methods;
  // `file` is the recipe file for marks inside lists; empty for a --set.
  std::function<void(const Value&, const std::string& file, Recipe&)> read;
  std::function<std::string(const Recipe&)> write;
  std::string key() const { return section + "." + name; }
};

template <typename S, typename T>
Field plain(const char* section, const char* name, S Recipe::*sec, T S::*member,
            unsigned methods = kAllMethods) {
  return {section, name, methods,
          [sec, member](const Value& v, const std::string&, Recipe& r) {
            read_value(v, (r.*sec).*member);
          },
          [sec, member](const Recipe& r) { return yaml_text((r.*sec).*member); }};
}

template <typename S, typename E, size_t N>
Field choice(const char* section, const char* name, S Recipe::*sec, E S::*member,
             const Choice<E> (&table)[N], unsigned methods = kAllMethods) {
  return {section, name, methods,
          [sec, member, &table](const Value& v, const std::string&, Recipe& r) {
            (r.*sec).*member = read_choice(v, table);
          },
          [sec, member, &table](const Recipe& r) {
            return std::string(choice_name(table, (r.*sec).*member));
          }};
}

template <typename S>
Field names(const char* section, const char* name, S Recipe::*sec,
            std::vector<std::string> S::*member, const char* what) {
  return {section, name, kAllMethods,
          [sec, member, what](const Value& v, const std::string& file, Recipe& r) {
            (r.*sec).*member = read_names(v, file, what);
          },
          [sec, member](const Recipe& r) { return yaml_text((r.*sec).*member); }};
}

Field quant_type_field() {
  Field f = choice("model", "bnb_4bit_quant_type", &Recipe::model,
                   &ModelSection::bnb_4bit_quant_type, kQuantTypes);
  auto read_nf4 = f.read;
  f.read = [read_nf4](const Value& v, const std::string& file, Recipe& r) {
    if (v.node.IsScalar() && v.node.Scalar() == "fp4")
      throw InputError(v.where + ": " + v.key +
                       ": fp4 is not supported; gemma-train quantizes to NF4 only (expected nf4)");
    read_nf4(v, file, r);
  };
  return f;
}

Field target_modules_field() {
  return {"peft", "target_modules", kAllMethods,
          [](const Value& v, const std::string& file, Recipe& r) {
            TargetModules t;  // null: PEFT's default for the architecture
            // PEFT compares the shorthand case-insensitively ("ALL-LINEAR" is all-linear too).
            if (v.node.IsScalar() && ascii_lower(v.node.Scalar()) == "all-linear") {
              t.form = TargetModules::Form::kAllLinear;
              t.names.clear();
            } else if (v.node.IsScalar()) {
              if (v.node.Scalar().empty())
                refuse(v,
                       "a list of module names, a regular expression or \"all-linear\" (an "
                       "empty regular expression matches no module)");
              t.form = TargetModules::Form::kRegex;
              t.names.clear();
              t.regex = v.node.Scalar();
              check_target_regex(t.regex, v.where + ": " + v.key);
            } else if (!v.node.IsNull()) {
              if (!v.node.IsSequence())
                refuse(v, "a list of module names, a regular expression or \"all-linear\"");
              t.names = read_names(v, file, "a module name");
            }
            r.peft.target_modules = t;
          },
          [](const Recipe& r) {
            const TargetModules& t = r.peft.target_modules;
            if (t.form == TargetModules::Form::kAllLinear) return std::string("\"all-linear\"");
            if (t.form == TargetModules::Form::kRegex) return yaml_quoted(t.regex);
            return yaml_text(t.names);
          }};
}

Field modules_to_save_field() {
  return {"peft", "modules_to_save", kAllMethods,
          [](const Value& v, const std::string& file, Recipe& r) {
            std::vector<std::string> modules = read_names(v, file, "a module name");
            if (!modules.empty())
              throw InputError(v.where + ": " + v.key +
                               ": not supported; gemma-train trains and saves adapters only, not "
                               "full copies of modules (expected an empty list, found " +
                               yaml_text(modules) + ")");
            r.peft.modules_to_save.clear();
          },
          [](const Recipe&) { return std::string("[]"); }};
}

Field resume_field() {
  return {"training", "resume_from_checkpoint", kAllMethods,
          [](const Value& v, const std::string&, Recipe& r) {
            ResumeFromCheckpoint resume;
            bool b = false;
            if (v.node.IsNull()) {
            } else if (!v.node.IsScalar()) {
              refuse(v, "false, true (the newest checkpoint in output_dir) or a checkpoint folder");
            } else if (parse_bool(v.node.Scalar(), b)) {
              resume.enabled = b;
            } else {
              resume.enabled = true;
              resume.path = v.node.Scalar();
            }
            r.training.resume_from_checkpoint = resume;
          },
          [](const Recipe& r) {
            const ResumeFromCheckpoint& resume = r.training.resume_from_checkpoint;
            if (!resume.enabled) return std::string("false");
            return resume.path.empty() ? std::string("true") : yaml_quoted(resume.path);
          }};
}

Field report_to_field() {
  return {"training", "report_to", kAllMethods,
          [](const Value& v, const std::string& file, Recipe& r) {
            std::vector<ReportTarget> targets;
            const std::vector<std::string> names = read_names(v, file, "none or tensorboard");
            for (size_t i = 0; i < names.size(); ++i) {
              if (names[i] == "none") continue;
              if (names[i] != "tensorboard") {
                const YAML::Node item = v.node.IsSequence() ? v.node[i] : v.node;
                refuse(v.node.IsSequence() ? element(v, item, i, file) : v, "none or tensorboard");
              }
              if (targets.empty()) targets.push_back(ReportTarget::kTensorboard);
            }
            r.training.report_to = targets;
          },
          [](const Recipe& r) {
            return std::string(r.training.report_to.empty() ? "none" : "tensorboard");
          }};
}

Field loss_type_field() {
  // Checked against the method in validate(): the method may come later in the file or a --set.
  return {"training", "loss_type", kAllMethods,
          [](const Value& v, const std::string& file, Recipe& r) {
            if (v.node.IsNull()) refuse(v, "a loss type or a list of them");
            r.training.loss_type = read_names(v, file, "a loss type");
          },
          [](const Recipe& r) {
            const std::vector<std::string>& l = r.training.loss_type;
            return l.size() == 1 ? yaml_quoted(l[0]) : yaml_text(l);
          }};
}

Field loss_weights_field() {
  return {"training", "loss_weights", kDpo,
          [](const Value& v, const std::string& file, Recipe& r) {
            std::vector<double> weights;
            if (v.node.IsScalar()) refuse(v, "a list of numbers, one per loss type");
            if (!v.node.IsNull()) {
              if (!v.node.IsSequence()) refuse(v, "a list of numbers, one per loss type");
              for (size_t i = 0; i < v.node.size(); ++i) {
                const YAML::Node item = v.node[i];
                double w = 0;
                read_value(element(v, item, i, file), w);
                weights.push_back(w);
              }
            }
            r.training.loss_weights = weights;
          },
          [](const Recipe& r) {
            const std::vector<double>& w = r.training.loss_weights;
            if (w.empty()) return std::string("null");
            std::string s = "[";
            for (size_t i = 0; i < w.size(); ++i) s += (i ? ", " : "") + yaml_text(w[i]);
            return s + "]";
          }};
}

const std::vector<Field>& recipe_fields() {
  using M = ModelSection;
  using P = PeftSection;
  using D = DataSection;
  using T = TrainingSection;
  using X = ExportSection;
  constexpr auto kM = &Recipe::model;
  constexpr auto kP = &Recipe::peft;
  constexpr auto kD = &Recipe::data;
  constexpr auto kT = &Recipe::training;
  constexpr auto kX = &Recipe::export_;
  static const std::vector<Field> fields = {
      plain("model", "name_or_path", kM, &M::name_or_path),
      choice("model", "dtype", kM, &M::dtype, kModelDtypes),
      plain("model", "load_in_4bit", kM, &M::load_in_4bit),
      quant_type_field(),
      plain("model", "bnb_4bit_use_double_quant", kM, &M::bnb_4bit_use_double_quant),
      choice("model", "bnb_4bit_compute_dtype", kM, &M::bnb_4bit_compute_dtype, kFloatDtypes),
      choice("model", "device", kM, &M::device, kDevices),
      plain("model", "ple_on_host", kM, &M::ple_on_host),
      choice("model", "attn_implementation", kM, &M::attn_implementation,
             kAttentionImplementations),

      plain("peft", "r", kP, &P::r),
      plain("peft", "lora_alpha", kP, &P::lora_alpha),
      plain("peft", "lora_dropout", kP, &P::lora_dropout),
      target_modules_field(),
      plain("peft", "use_dora", kP, &P::use_dora),
      plain("peft", "use_rslora", kP, &P::use_rslora),
      plain("peft", "init_lora_weights", kP, &P::init_lora_weights),
      modules_to_save_field(),
      plain("peft", "adapter_name_or_path", kP, &P::adapter_name_or_path),

      names("data", "train_files", kD, &D::train_files, "a path"),
      names("data", "eval_files", kD, &D::eval_files, "a path"),
      plain("data", "eval_split", kD, &D::eval_split),
      choice("data", "kind", kD, &D::kind, kDataKinds),
      plain("data", "skip_invalid", kD, &D::skip_invalid),

      choice("training", "method", kT, &T::method, kMethods),
      plain("training", "learning_rate", kT, &T::learning_rate),
      plain("training", "per_device_train_batch_size", kT, &T::per_device_train_batch_size),
      plain("training", "per_device_eval_batch_size", kT, &T::per_device_eval_batch_size),
      plain("training", "gradient_accumulation_steps", kT, &T::gradient_accumulation_steps),
      plain("training", "num_train_epochs", kT, &T::num_train_epochs),
      plain("training", "max_steps", kT, &T::max_steps),
      plain("training", "warmup_steps", kT, &T::warmup_steps),
      choice("training", "lr_scheduler_type", kT, &T::lr_scheduler_type, kSchedulers),
      choice("training", "optim", kT, &T::optim, kOptimizers),
      plain("training", "adam_beta1", kT, &T::adam_beta1),
      plain("training", "adam_beta2", kT, &T::adam_beta2),
      plain("training", "adam_epsilon", kT, &T::adam_epsilon),
      plain("training", "weight_decay", kT, &T::weight_decay),
      plain("training", "max_grad_norm", kT, &T::max_grad_norm),
      plain("training", "gradient_checkpointing", kT, &T::gradient_checkpointing),
      plain("training", "gradient_checkpointing_save_matmuls", kT,
            &T::gradient_checkpointing_save_matmuls),
      plain("training", "bf16", kT, &T::bf16),
      plain("training", "max_length", kT, &T::max_length),
      choice("training", "truncation_mode", kT, &T::truncation_mode, kTruncationModes, kSft | kDpo),
      plain("training", "packing", kT, &T::packing, kSft),
      choice("training", "packing_strategy", kT, &T::packing_strategy, kPackingStrategies, kSft),
      plain("training", "padding_free", kT, &T::padding_free, kSft | kDpo),
      plain("training", "completion_only_loss", kT, &T::completion_only_loss, kSft),
      plain("training", "assistant_only_loss", kT, &T::assistant_only_loss, kSft),
      choice("training", "loss_normalization", kT, &T::loss_normalization, kLossNormalizations,
             kSft),
      plain("training", "logging_steps", kT, &T::logging_steps),
      choice("training", "eval_strategy", kT, &T::eval_strategy, kEvalStrategies),
      plain("training", "eval_on_start", kT, &T::eval_on_start),
      plain("training", "logging_first_step", kT, &T::logging_first_step),
      plain("training", "eval_steps", kT, &T::eval_steps),
      plain("training", "save_steps", kT, &T::save_steps),
      plain("training", "save_total_limit", kT, &T::save_total_limit),
      plain("training", "seed", kT, &T::seed),
      plain("training", "ddp_timeout", kT, &T::ddp_timeout),
      plain("training", "output_dir", kT, &T::output_dir),
      plain("training", "overwrite_output_dir", kT, &T::overwrite_output_dir),
      resume_field(),
      report_to_field(),
      plain("training", "beta", kT, &T::beta, kDpo | kKto),
      loss_type_field(),
      plain("training", "desirable_weight", kT, &T::desirable_weight, kKto),
      plain("training", "undesirable_weight", kT, &T::undesirable_weight, kKto),
      choice("training", "train_sampling_strategy", kT, &T::train_sampling_strategy,
             kSamplingStrategies, kKto),
      loss_weights_field(),
      plain("training", "label_smoothing", kT, &T::label_smoothing, kDpo),
      plain("training", "f_divergence_type", kT, &T::f_divergence_type, kDpo),
      plain("training", "f_alpha_divergence_coef", kT, &T::f_alpha_divergence_coef, kDpo),
      plain("training", "ld_alpha", kT, &T::ld_alpha, kDpo),
      plain("training", "use_weighting", kT, &T::use_weighting, kDpo),
      plain("training", "discopop_tau", kT, &T::discopop_tau, kDpo),
      plain("training", "precompute_ref_log_probs", kT, &T::precompute_ref_log_probs, kDpo | kKto),
      plain("training", "precompute_ref_batch_size", kT, &T::precompute_ref_batch_size,
            kDpo | kKto),
      plain("training", "disable_dropout", kT, &T::disable_dropout, kDpo | kKto),
      choice("training", "ref_model", kT, &T::ref_model, kRefModels, kDpo | kKto),

      plain("export", "merged", kX, &X::merged),
      choice("export", "merged_dtype", kX, &X::merged_dtype, kFloatDtypes),
      plain("export", "gguf", kX, &X::gguf),
      choice("export", "gguf_dtype", kX, &X::gguf_dtype, kGgufDtypes),
  };
  return fields;
}

const Field* find_field(const std::string& section, const std::string& name) {
  for (const Field& f : recipe_fields())
    if (f.section == section && f.name == name) return &f;
  return nullptr;
}

bool is_section(const std::string& name) {
  for (const char* s : kSectionNames)
    if (name == s) return true;
  return false;
}

// ---- "Did you mean": the names other stacks use, then the nearest key by edit distance. ----

struct ForeignName {
  const char* name;
  const char* key;
  const char* note;  // appended to the suggestion; may be empty
};

// Axolotl's names (and a few of older transformers/TRL) for people coming from there.
constexpr ForeignName kForeignNames[] = {
    {"lr", "training.learning_rate", ""},
    {"base_model", "model.name_or_path", "Axolotl's base_model"},
    {"model_name_or_path", "model.name_or_path", ""},
    {"torch_dtype", "model.dtype", "transformers 5 calls it dtype"},
    {"adapter", "model.load_in_4bit", "Axolotl's adapter: qlora is load_in_4bit: true"},
    {"load_in_8bit", "model.load_in_4bit", "8-bit loading is not supported"},
    {"lora_r", "peft.r", "Axolotl's lora_r"},
    {"lora_target_modules", "peft.target_modules", "Axolotl's lora_target_modules"},
    {"lora_target_linear", "peft.target_modules",
     "Axolotl's lora_target_linear: true is target_modules: all-linear"},
    {"lora_model_dir", "peft.adapter_name_or_path", "Axolotl's lora_model_dir"},
    {"datasets", "data.train_files", "Axolotl's datasets"},
    {"test_datasets", "data.eval_files", "Axolotl's test_datasets"},
    {"val_set_size", "data.eval_split", "Axolotl's val_set_size"},
    {"micro_batch_size", "training.per_device_train_batch_size", "Axolotl's micro_batch_size"},
    {"batch_size", "training.per_device_train_batch_size", ""},
    {"num_epochs", "training.num_train_epochs", "Axolotl's num_epochs"},
    {"epochs", "training.num_train_epochs", ""},
    {"lr_scheduler", "training.lr_scheduler_type", "Axolotl's lr_scheduler"},
    {"optimizer", "training.optim", "Axolotl's optimizer"},
    {"warmup_ratio", "training.warmup_steps", "transformers 5: warmup_steps below 1 is a ratio"},
    {"sequence_len", "training.max_length", "Axolotl's sequence_len"},
    {"max_seq_length", "training.max_length", "TRL renamed it max_length"},
    {"sample_packing", "training.packing", "Axolotl's sample_packing"},
    {"train_on_inputs", "training.completion_only_loss",
     "Axolotl's train_on_inputs: false is completion_only_loss: true"},
    {"evaluation_strategy", "training.eval_strategy", "transformers renamed it eval_strategy"},
    {"activation_checkpointing", "training.gradient_checkpointing", ""},
    {"evals_per_epoch", "training.eval_strategy",
     "Axolotl's evals_per_epoch; eval_strategy: epoch"},
    {"rl", "training.method", "Axolotl's rl"},
    {"dpo_beta", "training.beta", "Axolotl's dpo_beta"},
    {"rl_beta", "training.beta", "Axolotl's rl_beta"},
};

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      const bool same = std::tolower(static_cast<unsigned char>(a[i - 1])) ==
                        std::tolower(static_cast<unsigned char>(b[j - 1]));
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (same ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// " (did you mean training.learning_rate?)" for `name` found in `section` (empty when unknown).
std::string suggestion(const std::string& section, const std::string& name) {
  for (const ForeignName& f : kForeignNames) {
    if (name != f.name) continue;
    const std::string note = *f.note ? std::string("; ") + f.note : "";
    return std::string(" (did you mean ") + f.key + "?" + note + ")";
  }
  const Field* best = nullptr;
  size_t best_score = 0;
  for (const Field& f : recipe_fields()) {
    // A key of the same section wins a tie.
    const size_t score = 2 * edit_distance(name, f.name) + (f.section == section ? 0 : 1);
    if (!best || score < best_score) best = &f, best_score = score;
  }
  return " (did you mean " + best->key() + "?)";
}

std::string section_suggestion(const std::string& name) {
  const char* best = kSectionNames[0];
  for (const char* s : kSectionNames)
    if (edit_distance(name, s) < edit_distance(name, best)) best = s;
  return std::string(" (did you mean ") + best + "?); the sections are " + kSectionList;
}

// ---- Reading a document and the overrides. ----

void read_section(const YAML::Node& map, const std::string& section, const std::string& file,
                  Recipe& recipe) {
  std::map<std::string, std::string> seen;
  for (const auto& entry : map) {
    const YAML::Node key_node = entry.first;
    const YAML::Node value = entry.second;
    const std::string at = mark_text(file, key_node.Mark());
    if (!key_node.IsScalar())
      throw InputError(at + ": " + section + ": expected a key name, found " +
                       found_text(key_node));
    const std::string& name = key_node.Scalar();
    const std::string key = section + "." + name;
    if (seen.count(name))
      throw InputError(at + ": duplicate key " + key + " (first at " + seen[name] + ")");
    seen[name] = at;
    const Field* field = find_field(section, name);
    if (!field) throw InputError(at + ": unknown key " + key + suggestion(section, name));
    field->read(Value{value, mark_text(file, value.Mark()), key}, file, recipe);
    recipe.set_at[key] = at;
  }
}

void read_document(const YAML::Node& root, const std::string& file, Recipe& recipe) {
  if (root.IsNull()) return;  // an empty file: every default (validate() names what is required)
  if (!root.IsMap())
    throw InputError(mark_text(file, root.Mark()) + ": expected a mapping of the sections " +
                     kSectionList + ", found " + found_text(root));
  std::map<std::string, std::string> seen;
  for (const auto& entry : root) {
    const YAML::Node key_node = entry.first;
    const std::string at = mark_text(file, key_node.Mark());
    const std::string name = key_node.IsScalar() ? key_node.Scalar() : "";
    if (!key_node.IsScalar() || !is_section(name))
      throw InputError(at + ": unknown section " +
                       (key_node.IsScalar() ? name : found_text(key_node)) +
                       section_suggestion(name));
    if (seen.count(name))
      throw InputError(at + ": duplicate section " + name + " (first at " + seen[name] + ")");
    seen[name] = at;
    const YAML::Node body = entry.second;
    if (body.IsNull()) continue;  // `peft:` with nothing under it: the defaults
    if (!body.IsMap())
      throw InputError(mark_text(file, body.Mark()) + ": " + name + ": expected a mapping of " +
                       name + " keys, found " + found_text(body));
    read_section(body, name, file, recipe);
  }
}

void apply_override(const std::string& set, Recipe& recipe) {
  const std::string where = "--set " + set;
  const size_t eq = set.find('=');
  if (eq == std::string::npos || eq == 0)
    throw InputError(where + ": expected section.key=value (e.g. training.max_steps=10)");
  const std::string key = set.substr(0, eq);
  const size_t dot = key.find('.');
  const std::string section = dot == std::string::npos ? "" : key.substr(0, dot);
  const std::string name = dot == std::string::npos ? key : key.substr(dot + 1);
  if (dot == std::string::npos)
    throw InputError(where + ": unknown key " + key + suggestion("", name));
  if (!is_section(section))
    throw InputError(where + ": unknown section " + section + section_suggestion(section));
  const Field* field = find_field(section, name);
  if (!field) throw InputError(where + ": unknown key " + key + suggestion(section, name));
  YAML::Node node;
  try {
    node = YAML::Load(set.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw InputError(where + ": " + key + ": the value is not valid YAML (" + e.msg + ")");
  }
  field->read(Value{node, where, key}, "", recipe);
  recipe.set_at[key] = where;
}

// What the Python stack decides after parsing (its __post_init__): the method's defaults and
// eval_steps' fallback to logging_steps (transformers/training_args.py).
void resolve_defaults(Recipe& recipe) {
  TrainingSection& t = recipe.training;
  if (!recipe.is_set("training.learning_rate"))  // sft_config.py, dpo_config.py, kto_config.py
    t.learning_rate = t.method == TrainingMethod::kSft ? 2e-5 : 1e-6;
  if (!recipe.is_set("training.loss_type"))
    t.loss_type = {t.method == TrainingMethod::kSft   ? "nll"
                   : t.method == TrainingMethod::kDpo ? "sigmoid"
                                                      : "kto"};
  if (t.eval_strategy == EvalStrategy::kSteps && (!t.eval_steps || *t.eval_steps == 0) &&
      t.logging_steps > 0)
    t.eval_steps = t.logging_steps;
}

// ---- validate(): messages name where the key was set, or the recipe when it was not. ----

class RuleCheck {
 public:
  explicit RuleCheck(const Recipe& recipe) : recipe_(recipe) {}

  std::string where(const std::string& key) const {
    const auto it = recipe_.set_at.find(key);
    return it == recipe_.set_at.end() ? recipe_.source : it->second;
  }
  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    throw InputError(where(key) + ": " + key + ": " + message);
  }
  void expect(bool ok, const std::string& key, const std::string& expected,
              const std::string& found) const {
    if (!ok) fail(key, "expected " + expected + ", found " + found);
  }
  void positive(int64_t value, const std::string& key) const {
    expect(value >= 1, key, "a positive integer", std::to_string(value));
  }
  void positive(double value, const std::string& key) const {
    expect(value > 0 && std::isfinite(value), key, "a positive number", number_text(value));
  }
  void in_unit_interval(double value, const std::string& key) const {
    expect(value >= 0 && value < 1, key, "a number in [0, 1)", number_text(value));
  }
  // transformers' step counts that may be ratios: in [0, 1) a ratio, otherwise whole steps.
  void steps_or_ratio(double value, const std::string& key, bool zero_ok) const {
    const bool ok = (zero_ok ? value >= 0 : value > 0) && (value < 1 || value == std::floor(value));
    expect(ok && std::isfinite(value), key,
           std::string(zero_ok ? "0, " : "") + "a ratio in (0, 1) or a whole number of steps",
           number_text(value));
  }

 private:
  const Recipe& recipe_;
};

const std::vector<std::string>& loss_types_of(TrainingMethod method) {
  return method == TrainingMethod::kSft   ? kSftLossTypes
         : method == TrainingMethod::kDpo ? kDpoLossTypes
                                          : kKtoLossTypes;
}

std::string configs_of(unsigned methods) {
  std::vector<std::string> names;
  if (methods & kSft) names.push_back("SFTConfig");
  if (methods & kDpo) names.push_back("DPOConfig");
  if (methods & kKto) names.push_back("KTOConfig");
  return join(names, " and ");
}

}  // namespace

const char* recipe_name(RecipeDtype value) { return choice_name(kModelDtypes, value); }
const char* recipe_name(TrainingMethod value) { return choice_name(kMethods, value); }
const char* recipe_name(DataKind value) { return choice_name(kDataKinds, value); }

Recipe load_recipe(const std::filesystem::path& file, const std::vector<std::string>& overrides) {
  const std::string name = file.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) throw InputError(name + ": no such recipe file");
  const std::uintmax_t size = std::filesystem::file_size(file, ec);
  if (ec) throw InputError(name + ": cannot read the recipe (" + ec.message() + ")");
  const std::string limit =
      ": " + std::to_string(size) + " bytes, over the 1 MiB a recipe may have";
  if (size > kMaxRecipeBytes) throw InputError(name + limit);
  const std::string text = read_text_file(file);
  if (text.size() > kMaxRecipeBytes) throw InputError(name + limit);

  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw InputError(mark_text(name, e.mark) + ": not valid YAML: " + e.msg);
  }
  Recipe recipe;
  recipe.source = name;
  read_document(root, name, recipe);
  for (const std::string& set : overrides) apply_override(set, recipe);
  resolve_defaults(recipe);
  validate(recipe);
  return recipe;
}

std::string print_recipe(const Recipe& recipe) {
  const unsigned method = method_bit(recipe.training.method);
  const bool from_adapter = !recipe.peft.adapter_name_or_path.empty();
  std::string out =
      "# The resolved gemma-train recipe: every key that applies, with its value.\n"
      "# Run it with: gemma-train train --recipe FILE [--set section.key=value ...]\n";
  std::string section;
  std::vector<std::string> left_out;
  auto close_section = [&] {
    if (!left_out.empty())
      out += "  # " +
             std::string(section == "peft"
                             ? "from the adapter's adapter_config.json: "
                             : "not for method " +
                                   std::string(recipe_name(recipe.training.method)) + ": ") +
             join(left_out) + "\n";
    left_out.clear();
  };
  for (const Field& f : recipe_fields()) {
    if (f.section != section) {
      close_section();
      section = f.section;
      out += section + ":\n";
    }
    const bool adapter_decides =
        from_adapter && f.section == "peft" && f.name != "adapter_name_or_path";
    if (!(f.methods & method) || adapter_decides) {
      left_out.push_back(f.name);
      continue;
    }
    out += "  " + f.name + ": " + f.write(recipe) + "\n";
  }
  close_section();
  return out;
}

// Longer than a screen on purpose: one rule after another, in the order of the sections, so the
// whole rule set reads in one place.
void validate(const Recipe& recipe) {
  const RuleCheck check(recipe);
  const ModelSection& m = recipe.model;
  const PeftSection& p = recipe.peft;
  const DataSection& d = recipe.data;
  const TrainingSection& t = recipe.training;
  const ExportSection& x = recipe.export_;

  if (m.name_or_path.empty())
    check.fail("model.name_or_path", "required: the folder of a Gemma 4 checkpoint");
  check.expect(m.bnb_4bit_compute_dtype != RecipeDtype::kAuto, "model.bnb_4bit_compute_dtype",
               choice_list(kFloatDtypes), "auto");

  // A saved adapter brings its own configuration: a peft key beside it would be ignored silently.
  if (!p.adapter_name_or_path.empty()) {
    for (const Field& f : recipe_fields()) {
      if (f.section != "peft" || f.name == "adapter_name_or_path" || !recipe.is_set(f.key()))
        continue;
      check.fail(f.key(), "cannot be set together with peft.adapter_name_or_path (" +
                              check.where("peft.adapter_name_or_path") +
                              "): training continues that adapter, whose adapter_config.json "
                              "decides " +
                              f.name + "; remove " + f.key());
    }
  }
  check.positive(p.r, "peft.r");
  check.positive(p.lora_alpha, "peft.lora_alpha");
  check.in_unit_interval(p.lora_dropout, "peft.lora_dropout");
  if (p.target_modules.form == TargetModules::Form::kNames) {
    check.expect(!p.target_modules.names.empty(), "peft.target_modules", "at least one module name",
                 "[]");
    for (const std::string& name : p.target_modules.names)
      check.expect(!name.empty() && name != "all-linear", "peft.target_modules",
                   "module names (all-linear stands alone, not in a list)", yaml_quoted(name));
  }
  check.expect(p.modules_to_save.empty(), "peft.modules_to_save",
               "an empty list (only adapters are trained and saved)", yaml_text(p.modules_to_save));

  if (d.train_files.empty())
    check.fail("data.train_files", "required: a JSONL file or a list of them");
  for (const std::string& f : d.train_files)
    check.expect(!f.empty(), "data.train_files", "paths", "\"\"");
  for (const std::string& f : d.eval_files)
    check.expect(!f.empty(), "data.eval_files", "paths", "\"\"");
  check.in_unit_interval(d.eval_split, "data.eval_split");
  if (d.eval_split > 0 && !d.eval_files.empty())
    check.fail("data.eval_split", "set either data.eval_files or data.eval_split, not both");
  const char* method = recipe_name(t.method);
  const bool kind_fits =
      d.kind == DataKind::kAuto ||
      (t.method == TrainingMethod::kSft ? d.kind == DataKind::kText || d.kind == DataKind::kChat ||
                                              d.kind == DataKind::kCompletion
       : t.method == TrainingMethod::kDpo
           ? d.kind == DataKind::kPreference
           : d.kind == DataKind::kKto || d.kind == DataKind::kPreference);
  if (!kind_fits)
    check.fail("data.kind", std::string(recipe_name(d.kind)) + " data does not train with method " +
                                method +
                                " (sft: text, chat or completion; dpo: preference; kto: "
                                "kto or preference)");

  // Keys another method's config has (TRL would reject them as unknown arguments).
  for (const Field& f : recipe_fields()) {
    if ((f.methods & method_bit(t.method)) || !recipe.is_set(f.key())) continue;
    check.fail(f.key(), "is " + configs_of(f.methods) + "'s, and training.method is " + method +
                            "; remove it or change the method");
  }
  check.positive(t.learning_rate, "training.learning_rate");
  check.positive(t.per_device_train_batch_size, "training.per_device_train_batch_size");
  check.positive(t.per_device_eval_batch_size, "training.per_device_eval_batch_size");
  check.positive(t.gradient_accumulation_steps, "training.gradient_accumulation_steps");
  check.expect(t.max_steps == -1 || t.max_steps > 0, "training.max_steps",
               "-1 (train num_train_epochs) or a positive number of steps",
               std::to_string(t.max_steps));
  if (t.max_steps == -1) check.positive(t.num_train_epochs, "training.num_train_epochs");
  check.steps_or_ratio(t.warmup_steps, "training.warmup_steps", /*zero_ok=*/true);
  check.in_unit_interval(t.adam_beta1, "training.adam_beta1");
  check.in_unit_interval(t.adam_beta2, "training.adam_beta2");
  check.positive(t.adam_epsilon, "training.adam_epsilon");
  check.expect(t.weight_decay >= 0, "training.weight_decay", "a number >= 0",
               number_text(t.weight_decay));
  check.expect(t.max_grad_norm >= 0, "training.max_grad_norm", "a number >= 0 (0: no clipping)",
               number_text(t.max_grad_norm));
  if (t.gradient_checkpointing_save_matmuls && !t.gradient_checkpointing)
    check.fail("training.gradient_checkpointing_save_matmuls",
               "keeps products for checkpointing's recomputation, and "
               "training.gradient_checkpointing is false");
  if (t.max_length) check.positive(*t.max_length, "training.max_length");
  if (t.packing && !t.max_length)
    check.fail("training.max_length", "packing needs a length to pack to; found null");
  if (t.completion_only_loss.value_or(false) && d.kind == DataKind::kText)
    check.fail("training.completion_only_loss",
               "text data has no completion to train on (data.kind is text)");
  if (t.assistant_only_loss && d.kind != DataKind::kAuto && d.kind != DataKind::kChat)
    check.fail("training.assistant_only_loss",
               std::string("needs chat data, and data.kind is ") + recipe_name(d.kind));
  check.steps_or_ratio(t.logging_steps, "training.logging_steps", /*zero_ok=*/false);
  if (t.eval_strategy != EvalStrategy::kNo && d.eval_files.empty() && d.eval_split == 0)
    check.fail("training.eval_strategy",
               "evaluation needs eval data: set data.eval_files or data.eval_split");
  if (t.eval_strategy == EvalStrategy::kSteps) {
    if (!t.eval_steps) check.fail("training.eval_steps", "required with eval_strategy steps");
    check.steps_or_ratio(*t.eval_steps, "training.eval_steps", /*zero_ok=*/false);
  }
  check.steps_or_ratio(t.save_steps, "training.save_steps", /*zero_ok=*/false);
  if (t.save_total_limit) check.positive(*t.save_total_limit, "training.save_total_limit");
  check.expect(t.seed >= 0, "training.seed", "an integer >= 0", std::to_string(t.seed));
  check.positive(t.ddp_timeout, "training.ddp_timeout");
  if (t.output_dir.empty())
    check.fail("training.output_dir", "required: the folder for checkpoints and the adapter");
  if (t.method != TrainingMethod::kSft) check.positive(t.beta, "training.beta");
  if (t.method == TrainingMethod::kKto) {
    check.positive(t.desirable_weight, "training.desirable_weight");
    check.positive(t.undesirable_weight, "training.undesirable_weight");
  }
  const std::vector<std::string>& losses = loss_types_of(t.method);
  check.expect(
      !t.loss_type.empty() && (t.method == TrainingMethod::kDpo || t.loss_type.size() == 1),
      "training.loss_type",
      t.method == TrainingMethod::kDpo ? "one or more loss types" : "one loss type",
      yaml_text(t.loss_type));
  for (const std::string& loss : t.loss_type)
    check.expect(std::find(losses.begin(), losses.end(), loss) != losses.end(),
                 "training.loss_type", "one of " + join(losses) + " (method " + method + ")",
                 yaml_quoted(loss));

  if (t.method == TrainingMethod::kDpo) {
    static const std::vector<std::string> kDivergences = {"reverse_kl", "forward_kl",
                                                          "js_divergence", "alpha_divergence"};
    check.expect(std::find(kDivergences.begin(), kDivergences.end(), t.f_divergence_type) !=
                     kDivergences.end(),
                 "training.f_divergence_type",
                 "one of reverse_kl, forward_kl, js_divergence or alpha_divergence",
                 yaml_quoted(t.f_divergence_type));
    if (!t.loss_weights.empty())
      check.expect(t.loss_weights.size() == t.loss_type.size(), "training.loss_weights",
                   "one weight per training.loss_type (" + std::to_string(t.loss_type.size()) + ")",
                   std::to_string(t.loss_weights.size()) + " weights");
    check.positive(t.discopop_tau, "training.discopop_tau");
  }
  if (t.precompute_ref_batch_size)
    check.positive(*t.precompute_ref_batch_size, "training.precompute_ref_batch_size");
  if (t.method == TrainingMethod::kKto && t.loss_type == std::vector<std::string>{"kto"})
    check.expect(t.train_sampling_strategy == SamplingStrategy::kSequential,
                 "training.train_sampling_strategy",
                 "sequential with loss_type kto (the KL pairs are fixed neighbours in the data's "
                 "order; random breaks them)",
                 "random");
  // KTOTrainer: the KL term pairs each prompt with another row's completion in the micro-batch.
  if (t.method == TrainingMethod::kKto && t.loss_type == std::vector<std::string>{"kto"})
    check.expect(t.per_device_train_batch_size > 1, "training.per_device_train_batch_size",
                 "more than 1 for KTO (its KL estimate pairs each prompt with another row's "
                 "completion of the same micro-batch; with 1 it equals the reward)",
                 std::to_string(t.per_device_train_batch_size));

  check.expect(x.merged_dtype != RecipeDtype::kAuto, "export.merged_dtype",
               choice_list(kFloatDtypes), "auto");
}

}  // namespace gemma
