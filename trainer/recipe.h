// The training recipe: one YAML file of five fixed sections (model, peft, data, training, export),
// each a typed struct whose fields carry the names and defaults of the Python stack (TRL 1.16,
// transformers 5.23, peft 0.21.2) so a TRL/PEFT user can read and write it (style.md §8).
// One parser reads the file and the `--set section.key=value` overrides; bad input is an
// InputError naming file:line:column (or the --set), the key, what was expected and what was found.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "export/gguf_out_type.h"
#include "model/gemma4_config.h"

namespace gemma {

// The dtypes a recipe names: model.dtype (all three), bnb_4bit_compute_dtype and
// export.merged_dtype (float32, bfloat16).
enum class RecipeDtype { kAuto, kFloat32, kBfloat16 };
enum class RecipeDevice { kCpu, kCuda };
// bitsandbytes' 4-bit codes; only NF4 is implemented (fp4 is refused by the parser).
enum class Bnb4bitQuantType { kNf4 };

struct ModelSection {
  std::string name_or_path;                                       // required: a checkpoint folder
  RecipeDtype dtype = RecipeDtype::kAuto;                         // from_pretrained(dtype="auto")
  bool load_in_4bit = false;                                      // BitsAndBytesConfig
  Bnb4bitQuantType bnb_4bit_quant_type = Bnb4bitQuantType::kNf4;  // bnb's default fp4 is refused
  bool bnb_4bit_use_double_quant = false;
  RecipeDtype bnb_4bit_compute_dtype = RecipeDtype::kFloat32;  // bnb: None means float32
  RecipeDevice device = RecipeDevice::kCpu;                    // ours
  bool ple_on_host = true;  // ours: per-layer embeddings stay in host memory
  // TRL's model_init_kwargs.attn_implementation, as a model key.
  AttentionImplementation attn_implementation = AttentionImplementation::kSdpa;
};

// peft.target_modules in PEFT's three spellings: a list of module names (a path equal to a name
// or ending in "." + name), one string (a regular expression the whole path must match), or
// "all-linear".
struct TargetModules {
  enum class Form { kNames, kRegex, kAllLinear };
  Form form = Form::kNames;
  // PEFT's default for Gemma 4 (peft/utils/constants.py, "gemma4": the language model's q_proj
  // and v_proj).
  std::vector<std::string> names = {"q_proj", "v_proj"};
  std::string regex;
};

struct PeftSection {  // peft/tuners/lora/config.py, LoraConfig
  int64_t r = 8;
  int64_t lora_alpha = 8;
  double lora_dropout = 0.0;
  TargetModules target_modules;
  bool use_dora = false;
  bool use_rslora = false;
  bool init_lora_weights = true;
  std::vector<std::string> modules_to_save;  // always empty: a non-empty list is refused
  // Continue from a saved PEFT adapter folder; its adapter_config.json then decides every other
  // peft key, so validate() refuses them alongside it.
  std::string adapter_name_or_path;
};

enum class DataKind { kAuto, kText, kChat, kCompletion, kPreference, kKto };

struct DataSection {
  std::vector<std::string> train_files;  // required: one path or a list
  std::vector<std::string> eval_files;
  double eval_split = 0.0;  // 0, or the fraction of train_files held out for evaluation
  DataKind kind = DataKind::kAuto;
  bool skip_invalid = false;
};

enum class TrainingMethod { kSft, kDpo, kKto };
enum class LrSchedulerType { kLinear, kCosine, kConstant, kConstantWithWarmup };
// transformers' OptimizerNames; adamw_torch_fused is TrainingArguments' default with torch >= 2.8
// and is the same update as adamw_torch here.
enum class OptimizerName {
  kAdamwTorch,
  kAdamwTorchFused,
  kAdamw8bit,
  kPagedAdamw8bit,
  kPagedAdamw32bit
};
enum class TruncationMode { kKeepStart, kKeepEnd };
enum class PackingStrategy { kBfd, kWrapped };
enum class EvalStrategy { kNo, kSteps, kEpoch };
enum class ReportTarget { kTensorboard };
// How a step's loss is averaged over its accumulation window: over every label token of the
// window (transformers with num_items_in_batch: Gemma4ForCausalLM), or per micro-batch and then
// over the micro-batches (what the Trainer does for Gemma4ForConditionalGeneration, whose
// accepts_loss_kwargs is False: the class TRL loads for released Gemma 4 checkpoints).
enum class LossNormalization { kWindowTokens, kMicroBatch };

// training.ref_model: what DPO and KTO compare the policy with. auto (TRL with ref_model=None):
// the adapter the run started from, frozen, when it continues one (peft.adapter_name_or_path),
// else the base with the adapters off; base: always the base (TRL given the base as ref_model).
enum class RefModel { kAuto, kBase };

// training.train_sampling_strategy (KTOConfig): the order rows are read in each epoch.
enum class SamplingStrategy { kRandom, kSequential };

// training.resume_from_checkpoint: false (start fresh), true (the newest checkpoint-N in
// output_dir) or a checkpoint folder.
struct ResumeFromCheckpoint {
  bool enabled = false;
  std::string path;  // empty with enabled: the newest checkpoint
};

// TrainingArguments (transformers/training_args.py) with the overrides of TRL's _BaseConfig
// (trl/trainer/base_config.py) and SFTConfig / DPOConfig / KTOConfig (trl/trainer/*_config.py).
struct TrainingSection {
  TrainingMethod method = TrainingMethod::kSft;
  // SFTConfig 2e-5; DPOConfig and KTOConfig 1e-6. Left unset, load_recipe() takes the method's.
  double learning_rate = 2e-5;
  int64_t per_device_train_batch_size = 8;
  int64_t per_device_eval_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  double num_train_epochs = 3.0;
  int64_t max_steps = -1;     // > 0 overrides num_train_epochs
  double warmup_steps = 0.0;  // transformers 5: >= 1 a step count, in [0, 1) a ratio of all steps
  LrSchedulerType lr_scheduler_type = LrSchedulerType::kLinear;
  OptimizerName optim = OptimizerName::kAdamwTorchFused;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;                        // 0 disables clipping
  bool gradient_checkpointing = true;                // TRL's _BaseConfig (transformers: false)
  bool gradient_checkpointing_save_matmuls = false;  // ours: keep frozen products for recompute
  bool bf16 = true;  // TRL: None means "not fp16", and there is no fp16 here
  std::optional<int64_t> max_length = 1024;  // null: no truncation
  TruncationMode truncation_mode = TruncationMode::kKeepStart;
  bool packing = false;
  PackingStrategy packing_strategy = PackingStrategy::kBfd;
  bool padding_free = false;
  std::optional<bool> completion_only_loss;  // null: on for prompt-completion data
  bool assistant_only_loss = false;
  LossNormalization loss_normalization = LossNormalization::kWindowTokens;  // ours
  double logging_steps = 10;  // TRL's _BaseConfig (transformers: 500); < 1 a ratio
  EvalStrategy eval_strategy = EvalStrategy::kNo;
  bool eval_on_start = false;       // TrainingArguments: evaluate before the first step
  bool logging_first_step = false;  // TrainingArguments: also log step 1
  // transformers: unset (or 0) with eval_strategy steps takes logging_steps; load_recipe() does so.
  std::optional<double> eval_steps;
  double save_steps = 500;  // < 1 a ratio
  std::optional<int64_t> save_total_limit;
  int64_t seed = 42;
  std::string output_dir;  // required
  bool overwrite_output_dir =
      false;  // transformers 4's flag (gone from 5): reuse a non-empty folder
  ResumeFromCheckpoint resume_from_checkpoint;
  std::vector<ReportTarget> report_to;  // "none": empty
  // DPOConfig / KTOConfig
  double beta = 0.1;
  // SFTConfig: nll | dft; DPOConfig: a list (default [sigmoid]); KTOConfig: kto |
  // apo_zero_unpaired. Left unset, load_recipe() takes the method's default.
  std::vector<std::string> loss_type = {"nll"};
  double desirable_weight = 1.0;  // KTOConfig
  double undesirable_weight = 1.0;
  // KTOConfig: sequential, as the KL pairs are each row's neighbours in the data's order.
  SamplingStrategy train_sampling_strategy = SamplingStrategy::kSequential;
  // DPOConfig
  std::vector<double> loss_weights;  // empty: 1.0 per loss type
  double label_smoothing = 0.0;
  std::string f_divergence_type = "reverse_kl";
  double f_alpha_divergence_coef = 0.5;
  std::optional<double> ld_alpha;
  bool use_weighting = false;
  double discopop_tau = 0.05;
  // DPOConfig and KTOConfig
  bool precompute_ref_log_probs = false;
  std::optional<int64_t> precompute_ref_batch_size;  // null: per_device_{train,eval}_batch_size
  bool disable_dropout = true;
  RefModel ref_model = RefModel::kAuto;
  // TrainingArguments: the longest a collective waits for the other ranks, in seconds.
  int64_t ddp_timeout = 1800;
};

struct ExportSection {
  bool merged = false;  // also write the base with the adapter folded in
  RecipeDtype merged_dtype = RecipeDtype::kBfloat16;
  bool gguf = false;  // also write llama.cpp's GGUF
  GgufOutType gguf_dtype = GgufOutType::kBF16;
};

struct Recipe {
  ModelSection model;
  PeftSection peft;
  DataSection data;
  TrainingSection training;
  ExportSection export_;  // the YAML section `export` (a C++ keyword)

  // Where the recipe came from (the file as given), for messages; "recipe" when built in code.
  std::string source = "recipe";
  // Every key the file or a --set gave explicitly ("peft.r"), with where: "recipe.yaml:7:6" or
  // "--set peft.r=16". Keys absent here hold their defaults.
  std::map<std::string, std::string> set_at;
  bool is_set(const std::string& key) const { return set_at.count(key) > 0; }

  // The train command's flags, not YAML keys: the memory the plan must fit (unset: what the
  // device has free), and --force, which runs a recipe the plan says will not fit.
  std::optional<int64_t> device_memory;
  bool force = false;
};

// Reads `file` (at most 1 MiB of YAML), then applies `overrides` in order ("training.max_steps=10",
// the value read as YAML: a scalar or a [list]), fills the method-dependent defaults
// (learning_rate, loss_type) and eval_steps' fallback, and validate()s the result.
Recipe load_recipe(const std::filesystem::path& file,
                   const std::vector<std::string>& overrides = {});

// The resolved recipe as YAML, every key that applies to it (load_recipe reads it back to an equal
// recipe). Keys that cannot be set alongside others (other method's keys, peft keys beside
// peft.adapter_name_or_path) are left out, named in a comment.
std::string print_recipe(const Recipe& recipe);

// Rules across keys (positive sizes, probabilities in range, keys of another method, peft keys
// beside an adapter, evaluation without eval data, ...). Throws InputError.
void validate(const Recipe& recipe);

// The names a recipe spells its choices with ("bfloat16", "cosine", ...), for messages and logs.
const char* recipe_name(RecipeDtype value);
const char* recipe_name(TrainingMethod value);
const char* recipe_name(DataKind value);

}  // namespace gemma
