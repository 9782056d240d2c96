#include "trainer/training_loop.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#ifdef GEMMA_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include "data/preference_dataset.h"
#include "data/sft_dataset.h"
#include "data/tokenizer.h"
#include "export/gguf_gemma4.h"
#include "io/atomic_output.h"
#include "io/bounded_json.h"
#include "io/input_error.h"
#include "io/tensorboard_events.h"
#include "kernels/host_allocator.h"
#include "model/gemma4_hf_checkpoint.h"
#include "optim/adamw.h"
#include "optim/adamw_8bit.h"
#include "optim/grad_clip.h"
#include "optim/lr_schedule.h"
#include "peft/lora_adapters.h"
#include "peft/merged_checkpoint.h"
#include "peft/peft_adapter.h"
#include "trainer/data_parallel.h"
#include "trainer/dpo_objective.h"
#include "trainer/kto_objective.h"
#include "trainer/memory_meter.h"
#include "trainer/memory_plan.h"
#include "trainer/metrics_plot.h"
#include "trainer/progress_bar.h"
#include "trainer/reference_logps_cache.h"
#include "trainer/reference_model.h"
#include "trainer/sft_objective.h"
#include "trainer/training_checkpoint.h"

namespace gemma {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---- signals: SIGINT / SIGTERM ask the loop to checkpoint and stop after the current step.

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  g_stop_signal.store(sig);
  // A second Ctrl-C is not caught: it stops the process at once.
  std::signal(sig, SIG_DFL);
}

class StopSignals {
 public:
  StopSignals() {
    g_stop_signal.store(0);
    old_int_ = std::signal(SIGINT, on_stop_signal);
    old_term_ = std::signal(SIGTERM, on_stop_signal);
  }
  ~StopSignals() {
    std::signal(SIGINT, old_int_);
    std::signal(SIGTERM, old_term_);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  int received() const { return g_stop_signal.load(); }

 private:
  void (*old_int_)(int) = SIG_DFL;
  void (*old_term_)(int) = SIG_DFL;
};

// Where the ranks other than 0 send what only rank 0 shows (the progress bar, notes).
class NullBuffer : public std::streambuf {
 protected:
  int overflow(int c) override { return c; }
};

// ---- the recipe's choices in the types of the layers below.

torch::ScalarType torch_dtype(RecipeDtype d, const fs::path& model_dir) {
  if (d == RecipeDtype::kFloat32) return torch::kFloat32;
  if (d == RecipeDtype::kBfloat16) return torch::kBFloat16;
  // auto: the checkpoint's own dtype, as from_pretrained(dtype="auto") reads it from config.json.
  try {
    return stored_dtype(read_text_file(model_dir / "config.json")).value_or(torch::kFloat32);
  } catch (const json::exception&) {
  }
  return torch::kFloat32;
}

}  // namespace

AdapterSpec adapter_spec(const Recipe& recipe) {
  const PeftSection& p = recipe.peft;
  AdapterSpec spec;
  spec.lora.r = p.r;
  spec.lora.alpha = static_cast<double>(p.lora_alpha);
  spec.lora.dropout = p.lora_dropout;
  spec.lora.use_rslora = p.use_rslora;
  spec.lora.use_dora = p.use_dora;
  spec.lora.init_lora_weights = p.init_lora_weights;
  switch (p.target_modules.form) {
    case TargetModules::Form::kNames:
      spec.target_modules = p.target_modules.names;
      break;
    case TargetModules::Form::kRegex:
      spec.target_modules.clear();
      spec.target_regex = p.target_modules.regex;
      break;
    case TargetModules::Form::kAllLinear:
      break;  // the model's own Linear names, filled in by all_linear_names() once it is loaded
  }
  spec.seed = static_cast<uint64_t>(recipe.training.seed);
  return spec;
}

namespace {

// PEFT's "all-linear": every Linear but the output layer, by its module name; for Gemma 4's E
// models that includes the per-layer-input projections (per_layer_input_gate,
// per_layer_projection, per_layer_model_projection), and for MoE models the router's proj.
std::vector<std::string> all_linear_names(Gemma4ForCausalLM& model) {
  std::set<std::string> names;
  for (const auto& [path, linear] : projections(model)) {
    const std::string name = path.substr(path.rfind('.') + 1);
    if (name != "lm_head") names.insert(name);
  }
  return {names.begin(), names.end()};
}

SftDataOptions sft_data_options(const Recipe& recipe) {
  const TrainingSection& t = recipe.training;
  SftDataOptions o;
  switch (recipe.data.kind) {
    case DataKind::kAuto:
      break;
    case DataKind::kText:
      o.kind = DatasetKind::kText;
      break;
    case DataKind::kChat:
      o.kind = DatasetKind::kChat;
      break;
    case DataKind::kCompletion:
      o.kind = DatasetKind::kCompletion;
      break;
    case DataKind::kPreference:
      o.kind = DatasetKind::kPreference;
      break;
    case DataKind::kKto:
      o.kind = DatasetKind::kKto;
      break;
  }
  o.max_length = t.max_length;
  o.truncation = t.truncation_mode == TruncationMode::kKeepEnd ? SftTruncation::kKeepEnd
                                                               : SftTruncation::kKeepStart;
  o.completion_only_loss = t.completion_only_loss;
  o.assistant_only_loss = t.assistant_only_loss;
  o.skip_invalid = recipe.data.skip_invalid;
  return o;
}

std::vector<fs::path> paths_of(const std::vector<std::string>& names) {
  return {names.begin(), names.end()};
}

// transformers' `if x < 1: x = ceil(max_steps * x)` for logging_steps, eval_steps, save_steps.
int64_t steps_of(double value, int64_t total) {
  if (value <= 0) return 0;
  if (value < 1) return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(value * total)));
  return static_cast<int64_t>(value);
}

// The epoch's order of the train examples: a Fisher-Yates shuffle by a generator seeded from the
// seed and the epoch, so a resumed run reads exactly the batches the uninterrupted one did.
std::vector<int64_t> epoch_order(int64_t n, int64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  std::mt19937_64 gen(static_cast<uint64_t>(seed) * 0x9E3779B97F4A7C15ULL +
                      static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(gen() % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

// Peak resident memory of the process (VmHWM).
int64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

// What the device has free for the run: on CUDA what the driver reports free, on CPU the kernel's
// MemAvailable; unset when neither can be read (the plan then has no budget to check).
std::optional<int64_t> free_device_memory(const torch::Device& device) {
  if (device.is_cuda()) {
#ifdef GEMMA_WITH_CUDA
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) == cudaSuccess) return static_cast<int64_t>(free);
#endif
    return std::nullopt;
  }
  return available_host_memory();
}

bool is_empty_dir(const fs::path& dir) {
  return fs::is_directory(dir) && fs::directory_iterator(dir) == fs::directory_iterator();
}

double mean_of(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (const double x : v) s += x;
  return s / static_cast<double>(v.size());
}

std::string fixed(double x, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << x;
  return s.str();
}

// Files a model folder carries for its tokenizer, copied beside the adapter (as the Trainer
// saves its processing_class).
void copy_tokenizer_files(const fs::path& model_dir, const fs::path& out_dir) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                           "chat_template.jinja", "special_tokens_map.json"}) {
    if (fs::is_regular_file(model_dir / name))
      write_file_atomically(out_dir / name, read_text_file(model_dir / name));
  }
}

// The run's outputs that are not checkpoints: metrics.jsonl (a line per log), TensorBoard.
class RunLog {
 public:
  RunLog(const fs::path& output_dir, bool tensorboard, const json& history)
      : path_(output_dir / "metrics.jsonl") {
    // Exactly the log of the steps the run has (on resume: up to its checkpoint).
    std::string text;
    for (const json& entry : history) text += entry.dump() + "\n";
    write_file_atomically(path_, text);
    out_.open(path_, std::ios::app | std::ios::binary);
    if (!out_) throw InputError(path_.string() + ": cannot be opened for writing");
    if (tensorboard) tb_ = std::make_unique<TensorBoardWriter>(output_dir / "runs");
  }

  void write(const json& entry) {
    out_ << entry.dump() << "\n";
    out_.flush();
    if (tb_) {
      const int64_t step = entry.at("step").get<int64_t>();
      for (const auto& [key, value] : entry.items()) {
        if (key == "step" || !value.is_number()) continue;
        // transformers' TensorBoardCallback: eval_x -> eval/x, the rest under train/.
        const std::string tag =
            key.rfind("eval_", 0) == 0 ? "eval/" + key.substr(5) : "train/" + key;
        tb_->add_scalar(tag, value.get<double>(), step);
      }
      tb_->flush();
    }
  }

  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  std::ofstream out_;
  std::unique_ptr<TensorBoardWriter> tb_;
};

struct EvalResult {
  double loss = 0;
  std::map<std::string, double> metrics;  // the objective's, averaged over batches
  double seconds = 0;
};

// The Trainer's evaluation: per-batch mean losses averaged with each batch's row count as weight;
// the objective's metrics averaged over the batches that report them, as TRL appends them. With
// several ranks each batch is a global one (per_device_eval_batch_size rows per rank), its loss
// normalised by the whole batch's loss units, so the result is the single-process one.
EvalResult evaluate(Gemma4ForCausalLM& model, TrainingObjective& objective, int64_t batch_size,
                    ProcessGroup& group) {
  const auto start = std::chrono::steady_clock::now();
  model->eval();
  EvalResult r;
  double weighted = 0;
  int64_t rows = 0;
  std::map<std::string, std::vector<double>> metrics;
  const int64_t n = objective.size(Split::kEval);
  const int64_t global_batch = batch_size * group.world_size();
  for (int64_t begin = 0; begin < n; begin += global_batch) {
    std::vector<int64_t> global;
    for (int64_t i = begin; i < std::min(n, begin + global_batch); ++i) global.push_back(i);
    const std::vector<int64_t> indices =
        rank_rows(global, group.rank(), group.world_size(), batch_size);
    torch::Tensor units = torch::tensor({objective.loss_units(indices, Split::kEval)});
    group.all_reduce_sum(units);
    const auto normalizer = static_cast<double>(std::max<int64_t>(1, units.item<int64_t>()));
    MicroBatchResult m;
    if (!indices.empty() || objective.reduces_across_ranks())
      m = objective.run(model, indices, Split::kEval, normalizer, false);
    torch::Tensor loss = torch::tensor({m.loss}, torch::kFloat64);
    group.all_reduce_sum(loss);
    weighted += loss.item<double>() * static_cast<double>(global.size());
    rows += static_cast<int64_t>(global.size());
    const std::map<std::string, double> merged =
        merge_rank_metrics(group, objective, {m.metrics}).front();
    for (const auto& [name, value] : merged) metrics[name].push_back(value);
  }
  model->train();
  r.loss = rows > 0 ? weighted / static_cast<double>(rows) : 0;
  for (const auto& [name, values] : metrics) r.metrics[name] = mean_of(values);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

// A held-out share of the training rows, as datasets' train_test_split(test_size, seed=...)
// makes one: a seeded draw of round(eval_split · n) rows, the rest kept in order.
template <typename Example>
std::vector<Example> split_off_eval(std::vector<Example>* train, const Recipe& recipe) {
  const auto n = static_cast<int64_t>(train->size());
  const int64_t n_eval = std::max<int64_t>(
      1, static_cast<int64_t>(std::llround(recipe.data.eval_split * static_cast<double>(n))));
  if (n_eval >= n)
    throw InputError(recipe.source + ": data.eval_split " + fixed(recipe.data.eval_split, 3) +
                     " leaves no training rows out of " + std::to_string(n));
  const std::vector<int64_t> order = epoch_order(n, recipe.training.seed, -1);
  std::vector<uint8_t> is_eval(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n_eval; ++i)
    is_eval[static_cast<size_t>(order[static_cast<size_t>(i)])] = 1;
  std::vector<Example> kept, eval;
  for (int64_t i = 0; i < n; ++i)
    (is_eval[static_cast<size_t>(i)] ? eval : kept)
        .push_back(std::move((*train)[static_cast<size_t>(i)]));
  *train = std::move(kept);
  return eval;
}

// The train and eval examples of one objective, read before the model loads.
template <typename Example>
struct TrainEval {
  std::vector<Example> train, eval;
};

template <typename Example, typename Read>
TrainEval<Example> read_train_eval(const Recipe& recipe, const Read& read) {
  TrainEval<Example> data;
  data.train = read(paths_of(recipe.data.train_files), true);
  if (!recipe.data.eval_files.empty()) {
    data.eval = read(paths_of(recipe.data.eval_files), false);
  } else if (recipe.data.eval_split > 0) {
    data.eval = split_off_eval(&data.train, recipe);
  }
  return data;
}

std::string report_text(const char* what, const PreferenceDataReport& r) {
  std::string out = std::to_string(r.rows) + " rows (" + what + ")";
  if (r.skipped_invalid) out += ", " + std::to_string(r.skipped_invalid) + " invalid rows skipped";
  if (r.dropped_long_prompt)
    out += ", " + std::to_string(r.dropped_long_prompt) +
           " dropped (their prompt alone fills max_length)";
  if (r.prompt_not_prefix)
    out += "; in " + std::to_string(r.prompt_not_prefix) +
           " the tokenized prompt is not a prefix of prompt + completion (tokens merge across "
           "the boundary, or the template renders a prompt alone differently): the completion "
           "starts where they part, as in TRL";
  return out;
}

// What the reference log-probs depend on, for precompute_ref_log_probs' cache.
json reference_cache_key(const Recipe& recipe, const ReferenceModel& reference,
                         const fs::path& model_dir, const std::string& method) {
  const TrainingSection& t = recipe.training;
  std::vector<fs::path> data = paths_of(recipe.data.train_files);
  json key = {{"method", method},
              {"train_files", files_digest(paths_of(recipe.data.train_files))},
              {"eval_files", recipe.data.eval_files.empty()
                                 ? json(nullptr)
                                 : json(files_digest(paths_of(recipe.data.eval_files)))},
              {"eval_split", recipe.data.eval_split},
              {"seed", t.seed},
              {"model", model_identity(model_dir)},
              {"load_in_4bit", recipe.model.load_in_4bit},
              {"max_length", t.max_length ? json(*t.max_length) : json(nullptr)},
              {"truncation_mode",
               t.truncation_mode == TruncationMode::kKeepEnd ? "keep_end" : "keep_start"},
              {"per_device_train_batch_size", t.per_device_train_batch_size},
              {"ld_alpha", t.ld_alpha ? json(*t.ld_alpha) : json(nullptr)},
              {"loss_type", t.loss_type},
              {"reference", reference.is_base()
                                ? json("base")
                                : json(files_digest({fs::path(recipe.peft.adapter_name_or_path) /
                                                     "adapter_model.safetensors"}))}};
  return key;
}

void check_output_dir(const Recipe& recipe) {
  const TrainingSection& t = recipe.training;
  const fs::path out = t.output_dir;
  const std::string key = "training.output_dir";
  std::error_code ec;
  const auto st = fs::symlink_status(out, ec);
  if (fs::exists(st)) {
    if (fs::is_symlink(st))
      throw InputError(recipe.source + ": " + key + " " + out.string() +
                       " is a symbolic link; give a real folder");
    if (!fs::is_directory(st))
      throw InputError(recipe.source + ": " + key + " " + out.string() +
                       " exists and is not a folder");
    if (!is_empty_dir(out) && !t.overwrite_output_dir && !t.resume_from_checkpoint.enabled)
      throw InputError(recipe.source + ": " + key + " " + out.string() +
                       " exists and is not empty; set training.overwrite_output_dir: true to "
                       "reuse it, or training.resume_from_checkpoint: true to continue its run");
  }
  const fs::path model = recipe.model.name_or_path;
  if (fs::exists(model) && fs::exists(out) && fs::equivalent(model, out, ec))
    throw InputError(recipe.source + ": " + key + " is the model folder; choose another");
}

}  // namespace

int run_training(const Recipe& recipe) {
  const std::unique_ptr<ProcessGroup> single = single_process_group();
  return run_training(recipe, *single);
}

int run_training(const Recipe& recipe, ProcessGroup& group) {
  const TrainingSection& t = recipe.training;
  group.set_timeout(std::chrono::seconds(t.ddp_timeout));
  const bool main_rank = group.is_main();
  const int world = group.world_size();
  NullBuffer null_buffer;
  std::ostream null_stream(&null_buffer);
  // Notes and the progress bar: rank 0's only.
  std::ostream& note = main_rank ? std::cerr : null_stream;
  check_output_dir(recipe);
  // transformers' set_seed(args.seed) before anything draws: dropout masks follow from the seed.
  torch::manual_seed(static_cast<uint64_t>(t.seed));
  const fs::path model_dir = recipe.model.name_or_path;
  if (!fs::is_regular_file(model_dir / "config.json"))
    throw InputError(recipe.source + ": model.name_or_path " + model_dir.string() +
                     " is not a model folder (no config.json there)");
  const fs::path output_dir = t.output_dir;

  // ---- data: everything is read and checked before the model loads or anything is written.
  const Tokenizer tokenizer = Tokenizer::from_folder(model_dir);
  const Gemma4Config config = load_gemma4_config((model_dir / "config.json").string());
  if (tokenizer.vocab_size() > config.vocab_size)
    throw InputError(model_dir.string() + ": the tokenizer has " +
                     std::to_string(tokenizer.vocab_size()) +
                     " tokens, the model's vocab_size is " + std::to_string(config.vocab_size) +
                     "; they are not a pair");
  SftDataOptions data_options = sft_data_options(recipe);
  read_tokenizer_settings(model_dir, &data_options);  // its eos token and template revision
  const int64_t pad_id = tokenizer.special_id("<pad>").value_or(0);
  // Per method, the examples (the objective is built once the model is loaded).
  TrainEval<SftExample> sft;
  TrainEval<PreferenceExample> dpo;
  TrainEval<KtoExample> kto;
  std::string data_summary;
  bool padding_free = false;
  int64_t n_eval = 0;
  if (t.method == TrainingMethod::kSft) {
    SftDataReport train_report;
    sft = read_train_eval<SftExample>(recipe, [&](const std::vector<fs::path>& files, bool train) {
      return read_sft_examples(files, tokenizer, data_options, train ? &train_report : nullptr);
    });
    const bool packed = t.packing;
    if (packed) {
      if (!t.max_length)
        throw InputError(recipe.source + ": training.packing needs training.max_length");
      const SftPacking how =
          t.packing_strategy == PackingStrategy::kWrapped ? SftPacking::kWrapped : SftPacking::kBfd;
      sft.train = pack_sft_examples(sft.train, *t.max_length, how);
      if (!sft.eval.empty()) sft.eval = pack_sft_examples(sft.eval, *t.max_length, how);
    }
    padding_free = t.padding_free || (packed && t.packing_strategy == PackingStrategy::kBfd);
    n_eval = static_cast<int64_t>(sft.eval.size());
    data_summary =
        std::to_string(sft.train.size()) + " training sequences" + (packed ? " (packed)" : "") +
        " from " + std::to_string(train_report.rows) + " rows" +
        (train_report.skipped_invalid
             ? ", " + std::to_string(train_report.skipped_invalid) + " invalid rows skipped"
             : "") +
        (train_report.truncated ? ", " + std::to_string(train_report.truncated) + " truncated"
                                : "") +
        (train_report.dropped_no_labels ? ", " + std::to_string(train_report.dropped_no_labels) +
                                              " without trainable tokens dropped"
                                        : "");
  } else if (t.method == TrainingMethod::kDpo) {
    PreferenceDataReport train_report;
    dpo = read_train_eval<PreferenceExample>(
        recipe, [&](const std::vector<fs::path>& files, bool train) {
          return read_preference_examples(files, tokenizer, data_options,
                                          train ? &train_report : nullptr);
        });
    n_eval = static_cast<int64_t>(dpo.eval.size());
    data_summary = std::to_string(dpo.train.size()) + " training pairs from " +
                   report_text("preference", train_report);
  } else {
    // The KL pairs rotate within consecutive groups of per_device_train_batch_size rows of the
    // data's order (TRL's add_kl_completion_ids, for the eval set too).
    PreferenceDataReport train_report;
    const int64_t group =
        t.loss_type == std::vector<std::string>{"kto"} ? t.per_device_train_batch_size : 0;
    kto = read_train_eval<KtoExample>(recipe, [&](const std::vector<fs::path>& files, bool train) {
      return read_kto_examples(files, tokenizer, data_options, group,
                               train ? &train_report : nullptr);
    });
    if (recipe.data.eval_split > 0 && group > 0) {
      // A split moves rows: rotate again within the final order of each set, as TRL prepares
      // the split datasets each on its own.
      rotate_kl_completions(&kto.train, group);
      rotate_kl_completions(&kto.eval, group);
    }
    n_eval = static_cast<int64_t>(kto.eval.size());
    data_summary =
        std::to_string(kto.train.size()) + " training completions (" +
        std::to_string(train_report.desirable) + " desirable, " +
        std::to_string(train_report.undesirable) + " undesirable) from " +
        report_text(
            train_report.kind == DatasetKind::kPreference ? "preference pairs, unpaired" : "kto",
            train_report);
    KtoLossOptions weights;
    weights.desirable_weight = t.desirable_weight;
    weights.undesirable_weight = t.undesirable_weight;
    const std::string warning =
        kto_weight_warning(train_report.desirable, train_report.undesirable, weights);
    if (!warning.empty()) note << "[train] warning: " << warning << "\n";
  }
  if (t.eval_strategy != EvalStrategy::kNo && n_eval == 0)
    throw InputError(recipe.source +
                     ": training.eval_strategy needs data.eval_files or "
                     "data.eval_split");
  // DPO's losses and options, checked before the model loads (TRL raises at init).
  DpoLossOptions dpo_loss_options;
  if (t.method == TrainingMethod::kDpo) {
    dpo_loss_options.beta = t.beta;
    dpo_loss_options.loss_types.clear();
    for (const std::string& name : t.loss_type)
      dpo_loss_options.loss_types.push_back(dpo_loss_type_from_name(name, "training.loss_type"));
    dpo_loss_options.loss_weights = t.loss_weights;
    dpo_loss_options.label_smoothing = t.label_smoothing;
    dpo_loss_options.f_divergence =
        f_divergence_from_name(t.f_divergence_type, "training.f_divergence_type");
    dpo_loss_options.f_alpha_divergence_coef = t.f_alpha_divergence_coef;
    dpo_loss_options.discopop_tau = t.discopop_tau;
    for (const std::string& w : check_dpo_loss_options(dpo_loss_options, t.use_weighting))
      note << "[train] warning: " << w << "\n";
  }

  // ---- steps, as the Trainer counts them.
  const int64_t batch_size = t.per_device_train_batch_size;
  const int64_t accumulation = t.gradient_accumulation_steps;
  const auto n_train = static_cast<int64_t>(t.method == TrainingMethod::kSft   ? sft.train.size()
                                            : t.method == TrainingMethod::kDpo ? dpo.train.size()
                                                                               : kto.train.size());
  // A global micro-batch: batch_size rows on each rank.
  const int64_t global_batch = batch_size * world;
  const int64_t batches_per_epoch = (n_train + global_batch - 1) / global_batch;
  const int64_t steps_per_epoch =
      std::max<int64_t>(1, (batches_per_epoch + accumulation - 1) / accumulation);
  int64_t total_steps =
      t.max_steps > 0 ? t.max_steps
                      : static_cast<int64_t>(
                            std::ceil(t.num_train_epochs * static_cast<double>(steps_per_epoch)));
  if (total_steps <= 0)
    throw InputError(recipe.source + ": training.num_train_epochs gives no step to train");

  // ---- the model and its adapter.
  note << "[train] " << data_summary << "; " << n_eval << " eval "
       << (t.method == TrainingMethod::kSft   ? "sequences"
           : t.method == TrainingMethod::kDpo ? "pairs"
                                              : "completions")
       << "\n";
  Gemma4LoadOptions load;
  load.dtype = recipe.model.load_in_4bit
                   ? torch_dtype(recipe.model.bnb_4bit_compute_dtype, model_dir)
                   : torch_dtype(recipe.model.dtype, model_dir);
  load.device = recipe.model.device == RecipeDevice::kCuda ? torch::Device(torch::kCUDA)
                                                           : torch::Device(torch::kCPU);
  if (load.device.is_cuda() && !torch::cuda::is_available())
    throw InputError(recipe.source + ": model.device cuda, but no CUDA device is available");
  load.nf4_base = recipe.model.load_in_4bit ? Nf4Base::kAlways : Nf4Base::kAsStored;
  load.ple_on_host = recipe.model.ple_on_host;
  load.attn_implementation = recipe.model.attn_implementation;

  // ---- the memory plan: printed, and a run it says cannot fit refused before the model loads.
  const fs::path config_path = model_dir / "config.json";
  const std::string config_text = read_text_file(config_path);
  const Gemma4Config planned_config = parse_gemma4_config(config_text, config_path.string());
  const int64_t chunk_tokens = loss_chunk_tokens(planned_config.vocab_size);
  const MemoryPlan plan =
      plan_memory(planned_config, load.dtype, recipe,
                  recipe.device_memory ? recipe.device_memory : free_device_memory(load.device),
                  stored_dtype(config_text));
  note << "[train] memory plan:\n" << memory_plan_table(plan);
  if (!plan.fits()) {
    std::string message = recipe.source + ": the memory plan predicts a peak of " +
                          format_bytes(plan.device_peak_bytes) + " on " + plan.device +
                          ", over the " + format_bytes(*plan.device_memory) + " it has";
    if (!plan.changes.empty()) {
      message += "; changes that lower it:";
      for (const MemoryPlanChange& c : plan.changes)
        message += " " + c.change + " (" + format_bytes(c.device_peak_bytes) + ");";
      message.pop_back();
    }
    if (!recipe.force) throw InputError(message + " (or run it anyway with --force)");
    note << "[train] warning: " << message << "; running anyway (--force)\n";
  }
  MemoryMeter meter(load.device);
  LoadedGemma4 loaded = load_gemma4(model_dir, load);
  Gemma4ForCausalLM model = loaded.model;
  const std::string prefix = loaded.report.prefix;
  AdapterSpec spec;
  if (!recipe.peft.adapter_name_or_path.empty()) {
    spec = load_peft_adapter(model, prefix, recipe.peft.adapter_name_or_path);
  } else {
    spec = adapter_spec(recipe);
    if (recipe.peft.target_modules.form == TargetModules::Form::kAllLinear)
      spec.target_modules = all_linear_names(model);
    attach_adapters(model, spec);
  }
  model->model->set_gradient_checkpointing(t.gradient_checkpointing,
                                           t.gradient_checkpointing_save_matmuls);
  model->train();
  const int64_t load_peak = meter.restart_peak();
  const NamedTensors params = trainable_parameters(model);
  if (params.empty()) throw InputError(recipe.source + ": peft.target_modules match no module");
  if (world > 1 && load.device.is_cuda()) {
    // Each process takes the GPU of its local rank (among those CUDA_VISIBLE_DEVICES shows).
    const int devices = static_cast<uint8_t>(torch::cuda::device_count());
    if (group.local_rank() >= devices)
      throw InputError(recipe.source + ": model.device cuda: local rank " +
                       std::to_string(group.local_rank()) + " has no GPU of its own (" +
                       std::to_string(devices) + " visible); start at most " +
                       std::to_string(devices) + " ranks per machine");
  }

  // ---- the objective. DPO and KTO: dropout off everywhere (TRL's disable_dropout, LoRA's too)
  // and the reference model.
  const bool preference = t.method != TrainingMethod::kSft;
  if (preference && t.disable_dropout) {
    for (const auto& [path, lora] : lora_adapters(model)) lora->set_dropout(0.0);
  }
  const bool frozen_reference =
      preference && t.ref_model == RefModel::kAuto && !recipe.peft.adapter_name_or_path.empty();
  ReferenceModel reference =
      frozen_reference ? ReferenceModel::frozen_adapter(model) : ReferenceModel();
  std::unique_ptr<TrainingObjective> objective;
  DpoObjective* dpo_objective = nullptr;
  KtoObjective* kto_objective = nullptr;
  if (t.method == TrainingMethod::kSft) {
    objective = std::make_unique<SftObjective>(std::move(sft.train), std::move(sft.eval), pad_id,
                                               padding_free, chunk_tokens);
  } else if (t.method == TrainingMethod::kDpo) {
    DpoObjectiveOptions o;
    o.chunk_tokens = chunk_tokens;
    o.loss = dpo_loss_options;
    o.use_weighting = t.use_weighting;
    o.ld_alpha = t.ld_alpha;
    o.max_length = t.max_length;
    o.truncation = data_options.truncation;
    o.pad_id = pad_id;
    auto d =
        std::make_unique<DpoObjective>(std::move(dpo.train), std::move(dpo.eval), o, reference);
    dpo_objective = d.get();
    objective = std::move(d);
  } else {
    KtoObjectiveOptions o;
    o.chunk_tokens = chunk_tokens;
    o.loss.beta = t.beta;
    o.loss.desirable_weight = t.desirable_weight;
    o.loss.undesirable_weight = t.undesirable_weight;
    o.loss.loss_type = kto_loss_type_from_name(t.loss_type.front(), "training.loss_type");
    o.max_length = t.max_length;
    o.pad_id = pad_id;
    o.sequential = t.train_sampling_strategy == SamplingStrategy::kSequential;
    auto k =
        std::make_unique<KtoObjective>(std::move(kto.train), std::move(kto.eval), o, reference);
    kto_objective = k.get();
    objective = std::move(k);
  }

  // ---- optimizer and schedule.
  std::vector<ParamGroup> groups = decay_parameter_groups(params, t.weight_decay);
  std::unique_ptr<Optimizer> optimizer;
  if (t.optim == OptimizerName::kAdamw8bit || t.optim == OptimizerName::kPagedAdamw8bit) {
    AdamW8bitOptions o;
    o.lr = t.learning_rate;
    o.beta1 = t.adam_beta1;
    o.beta2 = t.adam_beta2;
    o.eps = t.adam_epsilon;
    o.weight_decay = t.weight_decay;
    o.paged = t.optim == OptimizerName::kPagedAdamw8bit;
    optimizer = std::make_unique<AdamW8bit>(std::move(groups), o);
  } else {
    AdamWOptions o;
    o.lr = t.learning_rate;
    o.beta1 = t.adam_beta1;
    o.beta2 = t.adam_beta2;
    o.eps = t.adam_epsilon;
    o.weight_decay = t.weight_decay;
    o.paged = t.optim == OptimizerName::kPagedAdamw32bit;
    optimizer = std::make_unique<AdamW>(std::move(groups), o);
  }
  // What a checkpoint must agree with to be continued.
  const json run = {{"max_steps", total_steps},
                    {"per_device_train_batch_size", batch_size},
                    {"gradient_accumulation_steps", accumulation},
                    {"train_sequences", n_train},
                    {"seed", t.seed},
                    {"world_size", world}};

  // ---- resume.
  TrainingProgress progress;
  if (t.resume_from_checkpoint.enabled) {
    std::optional<fs::path> dir;
    if (!t.resume_from_checkpoint.path.empty()) {
      dir = fs::path(t.resume_from_checkpoint.path);
    } else {
      dir = newest_checkpoint(output_dir);
      if (!dir)
        throw InputError(recipe.source + ": training.resume_from_checkpoint: true, but " +
                         output_dir.string() + " has no checkpoint-N folder");
    }
    json saved_run;
    progress = load_training_checkpoint(*dir, model, prefix, *optimizer, &saved_run, group.rank());
    // Checkpoints of single-process runs before data parallelism say no world size.
    const int64_t saved_world = saved_run.value("world_size", int64_t{1});
    if (progress.samples_in_epoch < 0)
      progress.samples_in_epoch =
          std::min(n_train, progress.batches_in_epoch * batch_size * saved_world);
    const bool world_changed = saved_world != world;
    for (const auto& [key, value] : run.items()) {
      // Another world size reads the same samples in other steps: the step count follows.
      if (key == "world_size" || (world_changed && key == "max_steps" && t.max_steps <= 0))
        continue;
      if (saved_run.value(key, json()) != value)
        throw InputError(dir->string() + ": was saved by a run with " + key + " " +
                         saved_run.value(key, json()).dump() + ", this recipe gives " +
                         value.dump() + "; resume with the recipe it was trained with");
    }
    note << "[train] resuming from " << dir->string() << " at step " << progress.global_step
         << "\n";
    if (world_changed) {
      progress.batches_in_epoch = (progress.samples_in_epoch + global_batch - 1) / global_batch;
      const double position =
          static_cast<double>(progress.epoch) +
          static_cast<double>(progress.samples_in_epoch) / static_cast<double>(n_train);
      if (t.max_steps <= 0)
        total_steps = progress.global_step +
                      std::max<int64_t>(
                          1, static_cast<int64_t>(std::ceil((t.num_train_epochs - position) *
                                                            static_cast<double>(steps_per_epoch))));
      note << "[train] the checkpoint is of a run of " << saved_world << " rank"
           << (saved_world == 1 ? "" : "s") << ", this one has " << world
           << ": it continues at the same sample (epoch " << progress.epoch << ", sample "
           << progress.samples_in_epoch << " of " << n_train << "), " << global_batch * accumulation
           << " samples per step instead of " << batch_size * saved_world * accumulation
           << ", to step " << total_steps << "\n";
    }
  }
  // Every rank is ready: from here on the ranks run in step (cli/train_command.cpp sends a rank
  // that failed before this point here with its error).
  agree_ranks_ready(group, "");
  if (world > 1) {
    // The same run on every rank (the recipe and data each rank read), and rank 0's adapter.
    const std::vector<std::string> runs = group.all_gather(run.dump());
    for (int r = 1; r < world; ++r) {
      if (runs[static_cast<size_t>(r)] == runs[0]) continue;
      if (!main_rank) throw PeerRankFailed(0);
      throw InputError(recipe.source + ": rank " + std::to_string(r) + " reads another run (" +
                       runs[static_cast<size_t>(r)] + ") than rank 0 (" + runs[0] +
                       "): every rank needs the same recipe and data");
    }
    for (const auto& [name, param] : params) {
      torch::NoGradGuard no_grad;
      torch::Tensor p = param;
      if (p.is_contiguous()) {
        group.broadcast(p, 0);
      } else {
        torch::Tensor c = p.contiguous();
        group.broadcast(c, 0);
        p.copy_(c);
      }
    }
    objective->set_process_group(&group);
  }
  const int64_t logging_steps = steps_of(t.logging_steps, total_steps);
  const int64_t save_steps = steps_of(t.save_steps, total_steps);
  const int64_t eval_steps = steps_of(t.eval_steps.value_or(t.logging_steps), total_steps);
  LrScheduleKind kind = LrScheduleKind::kLinear;
  switch (t.lr_scheduler_type) {
    case LrSchedulerType::kLinear:
      kind = LrScheduleKind::kLinear;
      break;
    case LrSchedulerType::kCosine:
      kind = LrScheduleKind::kCosine;
      break;
    case LrSchedulerType::kConstant:
      kind = LrScheduleKind::kConstant;
      break;
    case LrSchedulerType::kConstantWithWarmup:
      kind = LrScheduleKind::kConstantWithWarmup;
      break;
  }
  const LrSchedule schedule(kind, warmup_steps_for(t.warmup_steps, total_steps), total_steps);

  if (main_rank) fs::create_directories(output_dir);
  if (preference && t.precompute_ref_log_probs) {
    // One pass of the reference over the data before training (or the cache of an earlier one).
    const json key = reference_cache_key(recipe, reference, model_dir, recipe_name(t.method));
    std::optional<ReferenceLogpsCache> cache = read_reference_logps(output_dir, key);
    if (cache) {
      note << "[train] reference log-probs from " << (output_dir / kReferenceLogpsFile).string()
           << "\n";
    } else {
      cache = ReferenceLogpsCache{key, {}, {}};
      model->eval();
      for (const Split split : {Split::kTrain, Split::kEval}) {
        if (objective->size(split) == 0) continue;
        const int64_t size = t.precompute_ref_batch_size.value_or(
            split == Split::kTrain ? t.per_device_train_batch_size : t.per_device_eval_batch_size);
        const auto report = [&](int64_t done, int64_t total) {
          note << "\r[train] reference log-probs (" << (split == Split::kTrain ? "train" : "eval")
               << "): " << done << "/" << total << std::flush;
        };
        std::vector<std::vector<double>>& out = split == Split::kTrain ? cache->train : cache->eval;
        if (dpo_objective) {
          for (const ReferenceLogps& r :
               dpo_objective->compute_reference_logps(model, split, size, report))
            out.push_back({r.chosen, r.rejected});
        } else {
          for (const KtoReferenceLogps& r :
               kto_objective->compute_reference_logps(model, split, size, report))
            out.push_back({r.completion, r.kl});
        }
        note << "\n";
      }
      model->train();
      if (main_rank) write_reference_logps(output_dir, *cache);
    }
    for (const Split split : {Split::kTrain, Split::kEval}) {
      const std::vector<std::vector<double>>& values =
          split == Split::kTrain ? cache->train : cache->eval;
      if (objective->size(split) == 0) continue;
      if (static_cast<int64_t>(values.size()) != objective->size(split))
        throw InputError((output_dir / kReferenceLogpsFile).string() +
                         ": holds another number of examples; remove it to recompute");
      if (dpo_objective) {
        std::vector<ReferenceLogps> logps;
        logps.reserve(values.size());
        for (const auto& v : values) logps.push_back({v.at(0), v.at(1)});
        dpo_objective->use_reference_logps(split, std::move(logps));
      } else {
        std::vector<KtoReferenceLogps> logps;
        logps.reserve(values.size());
        for (const auto& v : values) logps.push_back({v.at(0), v.at(1)});
        kto_objective->use_reference_logps(split, std::move(logps));
      }
    }
  }
  const bool tensorboard = !t.report_to.empty();
  std::optional<RunLog> log;
  if (main_rank) log.emplace(output_dir, tensorboard, progress.log_history);

  const auto log_entry = [&](json entry) {
    entry["step"] = progress.global_step;
    progress.log_history.push_back(entry);
    if (log) log->write(entry);
  };
  const auto epoch_now = [&] {
    return static_cast<double>(progress.epoch) +
           static_cast<double>(progress.batches_in_epoch) / static_cast<double>(batches_per_epoch);
  };
  const auto run_eval = [&](ProgressBar& bar) {
    const EvalResult e = evaluate(model, *objective, t.per_device_eval_batch_size, group);
    json entry = {{"eval_loss", e.loss},
                  {"eval_runtime", e.seconds},
                  {"eval_num_tokens", progress.num_tokens},
                  {"epoch", epoch_now()}};
    for (const auto& [name, value] : e.metrics) entry["eval_" + name] = value;
    log_entry(entry);
    bar.message("step " + std::to_string(progress.global_step) + ": eval_loss " + fixed(e.loss, 4));
  };
  // Every rank calls it: rank 0 writes the checkpoint with every rank's RNG state while the others
  // wait at the barrier.
  const auto save = [&] {
    const std::vector<std::string> rng = group.all_gather(encode_rng_state());
    fs::path dir = output_dir / ("checkpoint-" + std::to_string(progress.global_step));
    if (main_rank) {
      CheckpointContents c{&spec, prefix, recipe.model.name_or_path, optimizer.get(), &progress,
                           run,   rng};
      dir = save_training_checkpoint(output_dir, model, c);
      if (t.save_total_limit) {
        std::vector<fs::path> all = checkpoints_by_step(output_dir);
        while (static_cast<int64_t>(all.size()) > *t.save_total_limit) {
          fs::remove_all(all.front());
          all.erase(all.begin());
        }
      }
    }
    group.barrier();
    return dir;
  };

  StopSignals signals;
  ProgressBar bar(total_steps, note, main_rank && ProgressBar::stderr_is_terminal(),
                  ProgressBar::steady_seconds, progress.global_step);
  const auto run_start = std::chrono::steady_clock::now();
  auto log_start = run_start;
  int64_t tokens_at_log = progress.num_tokens;
  const int64_t first_step = progress.global_step;
  if (t.eval_on_start && progress.global_step == 0) run_eval(bar);

  const auto order_of = [&](int64_t epoch) {
    if (!objective->sequential()) return epoch_order(n_train, t.seed, epoch);
    std::vector<int64_t> in_order(static_cast<size_t>(n_train));
    std::iota(in_order.begin(), in_order.end(), int64_t{0});
    return in_order;
  };
  std::vector<int64_t> order = order_of(progress.epoch);
  const bool per_micro_batch = t.loss_normalization == LossNormalization::kMicroBatch;
  double last_loss = 0;
  while (progress.global_step < total_steps) {
    if (progress.samples_in_epoch >= n_train) {
      if (t.eval_strategy == EvalStrategy::kEpoch) run_eval(bar);
      ++progress.epoch;
      progress.batches_in_epoch = 0;
      progress.samples_in_epoch = 0;
      order = order_of(progress.epoch);
    }
    // The window: up to gradient_accumulation_steps global micro-batches, fewer at an epoch's
    // end; of each, this rank's rows.
    std::vector<std::vector<int64_t>> window;
    const int64_t position = progress.samples_in_epoch;
    int64_t window_end = position;
    for (int64_t k = 0; k < accumulation && position + k * global_batch < n_train; ++k) {
      const int64_t begin = position + k * global_batch;
      window_end = std::min(n_train, begin + global_batch);
      std::vector<int64_t> global(order.begin() + begin, order.begin() + window_end);
      window.push_back(rank_rows(global, group.rank(), world, batch_size));
    }
    // The loss units of each global micro-batch, known before the forward passes.
    torch::Tensor units = torch::empty({static_cast<int64_t>(window.size())}, torch::kInt64);
    for (size_t k = 0; k < window.size(); ++k)
      units[static_cast<int64_t>(k)] = objective->loss_units(window[k], Split::kTrain);
    group.all_reduce_sum(units);
    const auto normalizer = static_cast<double>(std::max<int64_t>(1, units.sum().item<int64_t>()));
    double step_loss = 0;
    int64_t step_tokens = 0;
    WindowMetrics metrics(window.size());
    for (size_t k = 0; k < window.size(); ++k) {
      const std::vector<int64_t>& indices = window[k];
      // micro_batch: this micro-batch's token mean, then the mean over the window's micro-batches
      const double divisor = per_micro_batch
                                 ? static_cast<double>(std::max<int64_t>(
                                       1, units[static_cast<int64_t>(k)].item<int64_t>())) *
                                       static_cast<double>(window.size())
                                 : normalizer;
      if (indices.empty() && !objective->reduces_across_ranks()) continue;
      const MicroBatchResult m = objective->run(model, indices, Split::kTrain, divisor, true);
      step_loss += m.loss;
      step_tokens += m.num_tokens;
      metrics[k] = m.metrics;
    }
    // The ranks' gradients, losses and token counts summed; whether any rank was asked to stop.
    all_reduce_gradients(group, params);
    torch::Tensor sums = torch::tensor(
        {step_loss, static_cast<double>(step_tokens), signals.received() != 0 ? 1.0 : 0.0},
        torch::kFloat64);
    group.all_reduce_sum(sums);
    step_loss = sums[0].item<double>();
    progress.num_tokens += static_cast<int64_t>(std::llround(sums[1].item<double>()));
    const bool stop_asked = sums[2].item<double>() > 0;
    for (const auto& by_name : merge_rank_metrics(group, *objective, metrics)) {
      for (const auto& [name, value] : by_name) progress.log_metrics[name].push_back(value);
    }
    const double grad_norm = clip_grad_norm(
        params, t.max_grad_norm > 0 ? t.max_grad_norm : std::numeric_limits<double>::infinity());
    optimizer->set_lr_multiplier(schedule.lr_at(progress.global_step));
    optimizer->step();
    optimizer->zero_grad();
    ++progress.global_step;
    progress.batches_in_epoch += static_cast<int64_t>(window.size());
    progress.samples_in_epoch = window_end;
    progress.train_loss_sum += step_loss;
    progress.log_loss_sum += step_loss;
    ++progress.log_steps;
    last_loss = step_loss;

    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(now - log_start).count();
    const double tokens_per_second =
        seconds > 0 ? static_cast<double>(progress.num_tokens - tokens_at_log) / seconds : 0;
    const bool last = progress.global_step == total_steps;
    const bool logged = (logging_steps > 0 && progress.global_step % logging_steps == 0) ||
                        (t.logging_first_step && progress.global_step == 1);
    if (logged) {
      json entry = {{"loss", progress.log_loss_sum / static_cast<double>(progress.log_steps)},
                    {"grad_norm", grad_norm},
                    // the rate this step used, as the Trainer logs it
                    {"learning_rate", t.learning_rate * schedule.lr_at(progress.global_step - 1)},
                    {"num_tokens", progress.num_tokens},
                    {"epoch", epoch_now()},
                    {"tokens_per_second", tokens_per_second},
                    {"peak_memory_bytes", meter.peak_bytes()},
                    {"predicted_peak_memory_bytes", plan.device_peak_bytes},
                    {"load_peak_memory_bytes", load_peak},
                    {"peak_rss_bytes", peak_rss_bytes()}};
      if (world > 1) {
        const CollectiveStats& c = group.stats();
        entry["all_reduce_seconds"] = c.all_reduce_seconds;
        entry["all_reduce_bytes"] = c.all_reduce_bytes;
      }
      for (const auto& [name, values] : progress.log_metrics) entry[name] = mean_of(values);
      log_entry(entry);
      progress.log_loss_sum = 0;
      progress.log_steps = 0;
      progress.log_metrics.clear();
      log_start = now;
      tokens_at_log = progress.num_tokens;
    }
    if (t.eval_strategy == EvalStrategy::kSteps && eval_steps > 0 &&
        progress.global_step % eval_steps == 0)
      run_eval(bar);
    if (last && t.eval_strategy == EvalStrategy::kEpoch && progress.samples_in_epoch >= n_train)
      run_eval(bar);
    bool saved = false;
    if ((save_steps > 0 && progress.global_step % save_steps == 0) || last) {
      const fs::path dir = save();
      saved = true;
      bar.message("saved " + dir.string());
    }
    // A terminal redraws the bar every step; a log gets a line per logging step.
    if (bar.terminal() || logged || last)
      bar.update(progress.global_step,
                 {{"loss", fixed(last_loss, 4)}, {"tok/s", fixed(tokens_per_second, 0)}});
    if (stop_asked && !last) {
      const int sig = signals.received() != 0 ? signals.received() : SIGTERM;
      const fs::path dir =
          saved ? output_dir / ("checkpoint-" + std::to_string(progress.global_step)) : save();
      bar.finish();
      note << "[train] " << (sig == SIGINT ? "interrupted" : "terminated") << " at step "
           << progress.global_step << " of " << total_steps << "; saved " << dir.string()
           << "; continue with --set training.resume_from_checkpoint=true\n";
      return 128 + sig;
    }
  }
  bar.finish();

  // ---- the end: the Trainer's summary, the adapter, the plot, the export.
  const double runtime =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  const int64_t steps_run = progress.global_step - first_step;
  if (!main_rank) return 0;  // rank 0 writes the rest
  log_entry(
      {{"train_runtime", runtime},
       {"train_samples_per_second",
        runtime > 0 ? static_cast<double>(steps_run * global_batch * accumulation) / runtime : 0},
       {"train_steps_per_second", runtime > 0 ? static_cast<double>(steps_run) / runtime : 0},
       {"train_loss", progress.train_loss_sum / static_cast<double>(progress.global_step)},
       {"epoch", epoch_now()}});
  write_peft_adapter_files(model, spec, prefix, recipe.model.name_or_path, output_dir);
  copy_tokenizer_files(model_dir, output_dir);
  std::cout << "wrote " << (output_dir / "adapter_model.safetensors").string() << " (PEFT adapter, "
            << params.size() << " tensors)\n";
  const std::vector<MetricsPoint> points = read_metrics_jsonl(log->path());
  if (std::any_of(points.begin(), points.end(),
                  [](const MetricsPoint& p) { return p.loss || p.eval_loss; })) {
    write_metrics_svg(points, output_dir / "loss.svg", "gemma-train " + recipe.source);
    std::cout << "wrote " << (output_dir / "loss.svg").string() << "\n";
  }
  if (recipe.export_.merged || recipe.export_.gguf) {
    const MergedCheckpoint merged(model_dir, output_dir);
    if (recipe.export_.merged) {
      const fs::path out = output_dir / "merged";
      if (fs::exists(fs::symlink_status(out))) fs::remove_all(out);
      write_merged_checkpoint(merged, out,
                              recipe.export_.merged_dtype == RecipeDtype::kFloat32
                                  ? torch::kFloat32
                                  : torch::kBFloat16);
      std::cout << "wrote " << out.string() << " (merged HF checkpoint)\n";
    }
    if (recipe.export_.gguf) {
      const fs::path out = output_dir / (std::string("model-") +
                                         gguf_out_type_name(recipe.export_.gguf_dtype) + ".gguf");
      if (fs::exists(fs::symlink_status(out))) fs::remove(out);
      export_gemma4_gguf(merged, out, recipe.export_.gguf_dtype);
      std::cout << "wrote " << out.string() << " (GGUF)\n";
    }
  }
  return 0;
}

}  // namespace gemma
