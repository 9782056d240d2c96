#include "trainer/recipe.h"

#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "io/input_error.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

// The three keys every recipe needs, then `rest` (YAML lines, sections included).
constexpr const char* kMinimal =
    "model:\n"
    "  name_or_path: /models/gemma-4-e2b\n"
    "data:\n"
    "  train_files: train.jsonl\n"
    "training:\n"
    "  output_dir: out\n";

class RecipeFiles {
 public:
  std::filesystem::path write(const std::string& text, const std::string& name = "recipe.yaml") {
    std::filesystem::path path = dir_ / name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

 private:
  testing::ScratchDir dir_;
};

// The InputError message of `f`, or "" when it did not throw one.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

std::string load_error(const std::string& text, const std::vector<std::string>& overrides = {}) {
  RecipeFiles files;
  const std::filesystem::path path = files.write(text);
  return error_of([&] { load_recipe(path, overrides); });
}

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

// Every default is the pinned Python stack's: LoraConfig (peft 0.21.2), BitsAndBytesConfig and
// TrainingArguments (transformers 5.23), _BaseConfig and SFTConfig (trl 1.16).
TEST(RecipeDefaults, EqualTheTrlPeftAndTransformersDefaults) {
  RecipeFiles files;
  const Recipe r = load_recipe(files.write(kMinimal));
  EXPECT_EQ(r.model.name_or_path, "/models/gemma-4-e2b");
  EXPECT_EQ(r.model.dtype, RecipeDtype::kAuto);
  EXPECT_FALSE(r.model.load_in_4bit);
  EXPECT_EQ(r.model.bnb_4bit_quant_type, Bnb4bitQuantType::kNf4);
  EXPECT_FALSE(r.model.bnb_4bit_use_double_quant);
  EXPECT_EQ(r.model.bnb_4bit_compute_dtype, RecipeDtype::kFloat32);
  EXPECT_EQ(r.model.device, RecipeDevice::kCpu);
  EXPECT_TRUE(r.model.ple_on_host);
  EXPECT_EQ(r.model.attn_implementation, AttentionImplementation::kSdpa);

  EXPECT_EQ(r.peft.r, 8);
  EXPECT_EQ(r.peft.lora_alpha, 8);
  EXPECT_EQ(r.peft.lora_dropout, 0.0);
  EXPECT_EQ(r.peft.target_modules.form, TargetModules::Form::kNames);
  EXPECT_EQ(r.peft.target_modules.names, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_FALSE(r.peft.use_dora);
  EXPECT_FALSE(r.peft.use_rslora);
  EXPECT_TRUE(r.peft.init_lora_weights);
  EXPECT_TRUE(r.peft.modules_to_save.empty());
  EXPECT_EQ(r.peft.adapter_name_or_path, "");

  EXPECT_EQ(r.data.train_files, (std::vector<std::string>{"train.jsonl"}));
  EXPECT_TRUE(r.data.eval_files.empty());
  EXPECT_EQ(r.data.eval_split, 0.0);
  EXPECT_EQ(r.data.kind, DataKind::kAuto);
  EXPECT_FALSE(r.data.skip_invalid);

  const TrainingSection& t = r.training;
  EXPECT_EQ(t.method, TrainingMethod::kSft);
  EXPECT_EQ(t.learning_rate, 2e-5);
  EXPECT_EQ(t.per_device_train_batch_size, 8);
  EXPECT_EQ(t.per_device_eval_batch_size, 8);
  EXPECT_EQ(t.gradient_accumulation_steps, 1);
  EXPECT_EQ(t.num_train_epochs, 3.0);
  EXPECT_EQ(t.max_steps, -1);
  EXPECT_EQ(t.warmup_steps, 0.0);
  EXPECT_EQ(t.lr_scheduler_type, LrSchedulerType::kLinear);
  EXPECT_EQ(t.optim, OptimizerName::kAdamwTorchFused);
  EXPECT_EQ(t.adam_beta1, 0.9);
  EXPECT_EQ(t.adam_beta2, 0.999);
  EXPECT_EQ(t.adam_epsilon, 1e-8);
  EXPECT_EQ(t.weight_decay, 0.0);
  EXPECT_EQ(t.max_grad_norm, 1.0);
  EXPECT_TRUE(t.gradient_checkpointing);
  EXPECT_FALSE(t.gradient_checkpointing_save_matmuls);  // ours: TRL recomputes every product
  EXPECT_TRUE(t.bf16);
  EXPECT_EQ(t.max_length, 1024);
  EXPECT_EQ(t.truncation_mode, TruncationMode::kKeepStart);
  EXPECT_FALSE(t.packing);
  EXPECT_EQ(t.packing_strategy, PackingStrategy::kBfd);
  EXPECT_FALSE(t.padding_free);
  EXPECT_FALSE(t.completion_only_loss.has_value());
  EXPECT_FALSE(t.assistant_only_loss);
  EXPECT_EQ(t.logging_steps, 10.0);
  EXPECT_EQ(t.eval_strategy, EvalStrategy::kNo);
  EXPECT_FALSE(t.eval_steps.has_value());
  EXPECT_EQ(t.save_steps, 500.0);
  EXPECT_FALSE(t.save_total_limit.has_value());
  EXPECT_EQ(t.seed, 42);
  EXPECT_EQ(t.output_dir, "out");
  EXPECT_FALSE(t.overwrite_output_dir);
  EXPECT_FALSE(t.resume_from_checkpoint.enabled);
  EXPECT_TRUE(t.report_to.empty());
  EXPECT_EQ(t.beta, 0.1);
  EXPECT_EQ(t.loss_type, (std::vector<std::string>{"nll"}));
  EXPECT_EQ(t.desirable_weight, 1.0);
  EXPECT_EQ(t.undesirable_weight, 1.0);

  EXPECT_FALSE(r.export_.merged);
  EXPECT_EQ(r.export_.merged_dtype, RecipeDtype::kBfloat16);
  EXPECT_FALSE(r.export_.gguf);
  EXPECT_EQ(r.export_.gguf_dtype, GgufOutType::kBF16);

  // A default-constructed recipe holds the same defaults.
  const Recipe d;
  EXPECT_EQ(d.training.learning_rate, 2e-5);
  EXPECT_EQ(d.training.optim, OptimizerName::kAdamwTorchFused);
}

// DPOConfig and KTOConfig default learning_rate to 1e-6 and have their own loss_type.
TEST(RecipeDefaults, FollowTheMethodsConfig) {
  RecipeFiles files;
  const std::string dpo = std::string(kMinimal) + "  method: dpo\n";
  const Recipe d = load_recipe(files.write(dpo));
  EXPECT_EQ(d.training.learning_rate, 1e-6);
  EXPECT_EQ(d.training.loss_type, (std::vector<std::string>{"sigmoid"}));
  const Recipe k = load_recipe(files.write(kMinimal), {"training.method=kto"});
  EXPECT_EQ(k.training.learning_rate, 1e-6);
  EXPECT_EQ(k.training.loss_type, (std::vector<std::string>{"kto"}));
  // An explicit value stays.
  const Recipe e = load_recipe(files.write(dpo + "  learning_rate: 5e-7\n"));
  EXPECT_EQ(e.training.learning_rate, 5e-7);
  EXPECT_TRUE(e.is_set("training.learning_rate"));
  EXPECT_FALSE(e.is_set("training.seed"));
}

constexpr const char* kEveryKey =
    "model:\n"
    "  name_or_path: /models/gemma-4-e4b\n"
    "  dtype: bfloat16\n"
    "  load_in_4bit: true\n"
    "  bnb_4bit_quant_type: nf4\n"
    "  bnb_4bit_use_double_quant: true\n"
    "  bnb_4bit_compute_dtype: bfloat16\n"
    "  device: cuda\n"
    "  ple_on_host: false\n"
    "  attn_implementation: eager\n"
    "peft:\n"
    "  r: 16\n"
    "  lora_alpha: 32\n"
    "  lora_dropout: 0.05\n"
    "  target_modules: [q_proj, k_proj, v_proj, o_proj]\n"
    "  use_dora: true\n"
    "  use_rslora: true\n"
    "  init_lora_weights: false\n"
    "  modules_to_save: []\n"
    "data:\n"
    "  train_files: [a.jsonl, b.jsonl]\n"
    "  eval_files: eval.jsonl\n"
    "  eval_split: 0\n"
    "  kind: chat\n"
    "  skip_invalid: true\n"
    "training:\n"
    "  method: sft\n"
    "  learning_rate: 2e-4\n"
    "  per_device_train_batch_size: 2\n"
    "  per_device_eval_batch_size: 4\n"
    "  gradient_accumulation_steps: 8\n"
    "  num_train_epochs: 1.5\n"
    "  max_steps: 100\n"
    "  warmup_steps: 0.03\n"
    "  lr_scheduler_type: cosine\n"
    "  optim: paged_adamw_8bit\n"
    "  adam_beta1: 0.8\n"
    "  adam_beta2: 0.95\n"
    "  adam_epsilon: 1e-6\n"
    "  weight_decay: 0.01\n"
    "  max_grad_norm: 0.3\n"
    "  gradient_checkpointing: false\n"
    "  bf16: false\n"
    "  max_length: 2048\n"
    "  truncation_mode: keep_end\n"
    "  packing: true\n"
    "  packing_strategy: wrapped\n"
    "  padding_free: true\n"
    "  completion_only_loss: false\n"
    "  assistant_only_loss: true\n"
    "  logging_steps: 5\n"
    "  eval_strategy: steps\n"
    "  eval_steps: 50\n"
    "  save_steps: 0.25\n"
    "  save_total_limit: 3\n"
    "  seed: 7\n"
    "  output_dir: runs/e4b\n"
    "  overwrite_output_dir: true\n"
    "  resume_from_checkpoint: runs/e4b/checkpoint-50\n"
    "  report_to: [tensorboard]\n"
    "  loss_type: dft\n"
    "export:\n"
    "  merged: true\n"
    "  merged_dtype: float32\n"
    "  gguf: true\n"
    "  gguf_dtype: q8_0\n";

TEST(RecipeParse, EveryKeyParses) {
  RecipeFiles files;
  const Recipe r = load_recipe(files.write(kEveryKey));
  EXPECT_EQ(r.model.name_or_path, "/models/gemma-4-e4b");
  EXPECT_EQ(r.model.dtype, RecipeDtype::kBfloat16);
  EXPECT_TRUE(r.model.load_in_4bit);
  EXPECT_TRUE(r.model.bnb_4bit_use_double_quant);
  EXPECT_EQ(r.model.bnb_4bit_compute_dtype, RecipeDtype::kBfloat16);
  EXPECT_EQ(r.model.device, RecipeDevice::kCuda);
  EXPECT_FALSE(r.model.ple_on_host);
  EXPECT_EQ(r.model.attn_implementation, AttentionImplementation::kEager);

  EXPECT_EQ(r.peft.r, 16);
  EXPECT_EQ(r.peft.lora_alpha, 32);
  EXPECT_EQ(r.peft.lora_dropout, 0.05);
  EXPECT_EQ(r.peft.target_modules.names,
            (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj"}));
  EXPECT_TRUE(r.peft.use_dora);
  EXPECT_TRUE(r.peft.use_rslora);
  EXPECT_FALSE(r.peft.init_lora_weights);

  EXPECT_EQ(r.data.train_files, (std::vector<std::string>{"a.jsonl", "b.jsonl"}));
  EXPECT_EQ(r.data.eval_files, (std::vector<std::string>{"eval.jsonl"}));
  EXPECT_EQ(r.data.kind, DataKind::kChat);
  EXPECT_TRUE(r.data.skip_invalid);

  const TrainingSection& t = r.training;
  EXPECT_EQ(t.learning_rate, 2e-4);
  EXPECT_EQ(t.per_device_train_batch_size, 2);
  EXPECT_EQ(t.per_device_eval_batch_size, 4);
  EXPECT_EQ(t.gradient_accumulation_steps, 8);
  EXPECT_EQ(t.num_train_epochs, 1.5);
  EXPECT_EQ(t.max_steps, 100);
  EXPECT_EQ(t.warmup_steps, 0.03);
  EXPECT_EQ(t.lr_scheduler_type, LrSchedulerType::kCosine);
  EXPECT_EQ(t.optim, OptimizerName::kPagedAdamw8bit);
  EXPECT_EQ(t.adam_beta1, 0.8);
  EXPECT_EQ(t.adam_beta2, 0.95);
  EXPECT_EQ(t.adam_epsilon, 1e-6);
  EXPECT_EQ(t.weight_decay, 0.01);
  EXPECT_EQ(t.max_grad_norm, 0.3);
  EXPECT_FALSE(t.gradient_checkpointing);
  EXPECT_FALSE(t.bf16);
  EXPECT_EQ(t.max_length, 2048);
  EXPECT_EQ(t.truncation_mode, TruncationMode::kKeepEnd);
  EXPECT_TRUE(t.packing);
  EXPECT_EQ(t.packing_strategy, PackingStrategy::kWrapped);
  EXPECT_TRUE(t.padding_free);
  EXPECT_EQ(t.completion_only_loss, false);
  EXPECT_TRUE(t.assistant_only_loss);
  EXPECT_EQ(t.logging_steps, 5.0);
  EXPECT_EQ(t.eval_strategy, EvalStrategy::kSteps);
  EXPECT_EQ(t.eval_steps, 50.0);
  EXPECT_EQ(t.save_steps, 0.25);
  EXPECT_EQ(t.save_total_limit, 3);
  EXPECT_EQ(t.seed, 7);
  EXPECT_EQ(t.output_dir, "runs/e4b");
  EXPECT_TRUE(t.overwrite_output_dir);
  EXPECT_TRUE(t.resume_from_checkpoint.enabled);
  EXPECT_EQ(t.resume_from_checkpoint.path, "runs/e4b/checkpoint-50");
  EXPECT_EQ(t.report_to, (std::vector<ReportTarget>{ReportTarget::kTensorboard}));
  EXPECT_EQ(t.loss_type, (std::vector<std::string>{"dft"}));

  EXPECT_TRUE(r.export_.merged);
  EXPECT_EQ(r.export_.merged_dtype, RecipeDtype::kFloat32);
  EXPECT_TRUE(r.export_.gguf);
  EXPECT_EQ(r.export_.gguf_dtype, GgufOutType::kQ8_0);
  EXPECT_EQ(r.set_at.size(), 61u);  // every key above was recorded as set
}

TEST(RecipeParse, MethodKeysAndSpellingsParse) {
  RecipeFiles files;
  const Recipe d =
      load_recipe(files.write(std::string(kMinimal) + "  method: dpo\n"
                                                      "  beta: 0.05\n"
                                                      "  loss_type: [sigmoid, sft]\n"
                                                      "  resume_from_checkpoint: true\n"
                                                      "  report_to: none\n"
                                                      "  max_length: null\n"
                                                      "peft:\n"
                                                      "  target_modules: all-linear\n"));
  EXPECT_EQ(d.training.beta, 0.05);
  EXPECT_EQ(d.training.loss_type, (std::vector<std::string>{"sigmoid", "sft"}));
  EXPECT_TRUE(d.training.resume_from_checkpoint.enabled);
  EXPECT_EQ(d.training.resume_from_checkpoint.path, "");
  EXPECT_FALSE(d.training.max_length.has_value());
  EXPECT_EQ(d.peft.target_modules.form, TargetModules::Form::kAllLinear);

  const Recipe k =
      load_recipe(files.write(std::string(kMinimal) + "  method: kto\n"
                                                      "  desirable_weight: 1.33\n"
                                                      "  undesirable_weight: 0.5\n"
                                                      "  loss_type: apo_zero_unpaired\n"
                                                      "peft:\n"
                                                      "  target_modules: '.*\\.(q_proj|v_proj)'\n"),
                  {"data.kind=kto"});
  EXPECT_EQ(k.training.desirable_weight, 1.33);
  EXPECT_EQ(k.training.undesirable_weight, 0.5);
  EXPECT_EQ(k.peft.target_modules.form, TargetModules::Form::kRegex);
  EXPECT_EQ(k.peft.target_modules.regex, ".*\\.(q_proj|v_proj)");
}

// With eval_strategy steps and no eval_steps, transformers takes logging_steps.
TEST(RecipeParse, EvalStepsFallBackToLoggingSteps) {
  RecipeFiles files;
  const Recipe r = load_recipe(files.write(std::string(kMinimal) + "  eval_strategy: steps\n"
                                                                   "  logging_steps: 25\n"),
                               {"data.eval_split=0.1"});
  EXPECT_EQ(r.training.eval_steps, 25.0);
}

TEST(RecipeOverrides, WinOverTheFile) {
  RecipeFiles files;
  const std::filesystem::path path =
      files.write(std::string(kMinimal) + "  max_steps: 500\n  learning_rate: 1e-4\n");
  const Recipe r = load_recipe(
      path, {"training.max_steps=10", "peft.target_modules=[q_proj, o_proj]",
             "data.train_files=x.jsonl", "training.learning_rate=3e-4", "training.max_steps=20",
             "export.gguf=true", "training.gradient_checkpointing_save_matmuls=true"});
  EXPECT_EQ(r.training.max_steps, 20);  // the last --set wins
  EXPECT_TRUE(r.training.gradient_checkpointing_save_matmuls);
  EXPECT_EQ(r.training.learning_rate, 3e-4);
  EXPECT_EQ(r.peft.target_modules.names, (std::vector<std::string>{"q_proj", "o_proj"}));
  EXPECT_EQ(r.data.train_files, (std::vector<std::string>{"x.jsonl"}));
  EXPECT_TRUE(r.export_.gguf);
  EXPECT_EQ(r.set_at.at("training.max_steps"), "--set training.max_steps=20");
}

// print_recipe gives every key; loading it back gives the same recipe (and the same print).
TEST(RecipePrint, RoundTrips) {
  RecipeFiles files;
  const std::vector<std::string> recipes = {
      kMinimal,
      kEveryKey,
      std::string("model:\n  name_or_path: \"m\\u00e9 \\\\ \\\"q\\\"\\ttab\"\n") +
          "data:\n  train_files: t\ntraining:\n  method: dpo\n  loss_type: [sigmoid, ipo]\n" +
          "  output_dir: \"a \\\"quoted\\\" dir\"\n",
      std::string(kMinimal) + "  method: kto\n  resume_from_checkpoint: true\n",
      std::string(kMinimal) + "peft:\n  adapter_name_or_path: runs/first/adapter\n",
      std::string(kMinimal) + "peft:\n  target_modules: all-linear\n",
      std::string(kMinimal) + "peft:\n  target_modules: '.*(q|v)_proj'\n",
  };
  for (const std::string& text : recipes) {
    const Recipe first = load_recipe(files.write(text));
    const std::string printed = print_recipe(first);
    const Recipe second = load_recipe(files.write(printed, "printed.yaml"));
    EXPECT_EQ(print_recipe(second), printed) << text;
    EXPECT_EQ(second.training.learning_rate, first.training.learning_rate);
    EXPECT_EQ(second.training.output_dir, first.training.output_dir);
    EXPECT_EQ(second.peft.target_modules.form, first.peft.target_modules.form);
    EXPECT_EQ(second.training.loss_type, first.training.loss_type);
  }
  const std::string printed = print_recipe(load_recipe(files.write(kMinimal)));
  EXPECT_HAS(printed, "  learning_rate: 2e-05\n");
  EXPECT_HAS(printed, "  num_train_epochs: 3.0\n");
  EXPECT_HAS(printed, "  optim: adamw_torch_fused\n");
  EXPECT_HAS(printed,
             "  # not for method sft: beta, desirable_weight, undesirable_weight, "
             "train_sampling_strategy, loss_weights, label_smoothing, f_divergence_type, "
             "f_alpha_divergence_coef, ld_alpha, use_weighting, discopop_tau, "
             "precompute_ref_log_probs, precompute_ref_batch_size, disable_dropout, ref_model\n");
}

// The preference trainers' keys: typed, checked across keys as DPOConfig and KTOConfig do.
TEST(RecipeErrors, PreferenceKeysAreChecked) {
  RecipeFiles files;
  const std::string dpo = std::string(kMinimal) + "  method: dpo\n";
  const Recipe r = load_recipe(
      files.write(dpo + "  loss_type: [sigmoid, sft]\n  loss_weights: [1.0, 0.5]\n  ld_alpha: 0.5\n"
                        "  precompute_ref_log_probs: true\n  ref_model: base\n"));
  EXPECT_EQ(r.training.loss_weights, (std::vector<double>{1.0, 0.5}));
  EXPECT_EQ(r.training.ld_alpha, 0.5);
  EXPECT_TRUE(r.training.precompute_ref_log_probs);
  EXPECT_EQ(r.training.ref_model, RefModel::kBase);
  EXPECT_TRUE(r.training.disable_dropout);
  EXPECT_HAS(load_error(dpo + "  loss_type: [sigmoid, sft]\n  loss_weights: [1.0]\n"),
             "training.loss_weights: expected one weight per training.loss_type (2), found 1 "
             "weights");
  EXPECT_HAS(load_error(dpo + "  f_divergence_type: kl\n"),
             "training.f_divergence_type: expected one of reverse_kl, forward_kl, js_divergence "
             "or alpha_divergence, found \"kl\"");
  EXPECT_HAS(load_error(dpo + "  ref_model: copy\n"),
             "training.ref_model: expected one of auto or base, found \"copy\"");
  const std::string kto = std::string(kMinimal) + "  method: kto\n";
  EXPECT_HAS(load_error(kto + "  per_device_train_batch_size: 1\n"),
             "training.per_device_train_batch_size: expected more than 1 for KTO");
  EXPECT_NO_THROW(load_recipe(
      files.write(kto + "  per_device_train_batch_size: 1\n  loss_type: apo_zero_unpaired\n")));
  EXPECT_HAS(load_error(kto + "  train_sampling_strategy: random\n"),
             "training.train_sampling_strategy: expected sequential with loss_type kto");
  EXPECT_HAS(load_error(std::string(kMinimal) + "  ld_alpha: 0.5\n"),
             "training.ld_alpha: is DPOConfig's, and training.method is sft");
}

// ---- Errors: each names the file, line:column, the key and what was expected. ----

TEST(RecipeErrors, UnknownKeyNamesTheNearestKey) {
  const std::string e = load_error(std::string(kMinimal) + "  lerning_rate: 1e-4\n");
  EXPECT_HAS(e,
             "recipe.yaml:7:3: unknown key training.lerning_rate (did you mean "
             "training.learning_rate?)");
  // A key in the wrong section points to its own.
  EXPECT_HAS(load_error(std::string(kMinimal) + "  lora_alpha: 4\n"),
             "recipe.yaml:7:3: unknown key training.lora_alpha (did you mean peft.lora_alpha?)");
}

TEST(RecipeErrors, AxolotlNamesPointToOurs) {
  EXPECT_HAS(load_error(std::string(kMinimal) + "peft:\n  lora_r: 16\n"),
             "recipe.yaml:8:3: unknown key peft.lora_r (did you mean peft.r?");
  EXPECT_HAS(load_error(std::string(kMinimal) + "  micro_batch_size: 2\n"),
             "(did you mean training.per_device_train_batch_size?");
  EXPECT_HAS(load_error(std::string(kMinimal) + "  sequence_len: 4096\n"),
             "(did you mean training.max_length?");
}

TEST(RecipeErrors, WrongTypeNamesExpectedAndFound) {
  const std::string e = load_error(std::string(kMinimal) + "  learning_rate: abc\n");
  EXPECT_HAS(e, "recipe.yaml:7:18: training.learning_rate: expected a number, found \"abc\"");
  EXPECT_HAS(load_error(std::string(kMinimal) + "  max_steps: 2.5\n"),
             "recipe.yaml:7:14: training.max_steps: expected an integer, found \"2.5\"");
  EXPECT_HAS(load_error(std::string(kMinimal) + "  packing: maybe\n"),
             "recipe.yaml:7:12: training.packing: expected true or false, found \"maybe\"");
  EXPECT_HAS(load_error(std::string(kMinimal) + "  seed: [1, 2]\n"),
             "recipe.yaml:7:9: training.seed: expected an integer, found a list");
  EXPECT_HAS(load_error("training:\n  output_dir: out\ndata:\n  train_files: [a.jsonl, {x: 1}]\n"),
             "recipe.yaml:4:26: data.train_files[1]: expected a path, found a mapping");
}

TEST(RecipeErrors, UnknownSectionListsTheSections) {
  const std::string e = load_error(std::string(kMinimal) + "trainer:\n  seed: 1\n");
  EXPECT_HAS(e,
             "recipe.yaml:7:1: unknown section trainer (did you mean training?); the sections "
             "are model, peft, data, training, export");
}

TEST(RecipeErrors, ValueOutsideAClosedSetListsTheChoices) {
  EXPECT_HAS(load_error(std::string(kMinimal) + "  lr_scheduler_type: cosine_with_restarts\n"),
             "recipe.yaml:7:22: training.lr_scheduler_type: expected one of linear, cosine, "
             "constant or constant_with_warmup, found \"cosine_with_restarts\"");
  EXPECT_HAS(load_error(std::string(kMinimal) + "  optim: sgd\n"),
             "expected one of adamw_torch, adamw_torch_fused, adamw_8bit, paged_adamw_8bit or "
             "paged_adamw_32bit, found \"sgd\"");
  EXPECT_HAS(load_error(std::string(kMinimal) + "export:\n  gguf_dtype: q4_0\n"),
             "recipe.yaml:8:15: export.gguf_dtype: expected one of f32, f16, bf16 or q8_0");
  EXPECT_HAS(load_error(std::string(kMinimal) + "  loss_type: ipo\n"),
             "recipe.yaml:7:3: training.loss_type: expected one of nll, dft (method sft), "
             "found \"ipo\"");
}

TEST(RecipeErrors, RefusedChoicesSayWhy) {
  EXPECT_HAS(load_error("model:\n  name_or_path: m\n  bnb_4bit_quant_type: fp4\n"),
             "recipe.yaml:3:24: model.bnb_4bit_quant_type: fp4 is not supported; gemma-train "
             "quantizes to NF4 only (expected nf4)");
  EXPECT_HAS(load_error(std::string(kMinimal) + "peft:\n  modules_to_save: [lm_head]\n"),
             "recipe.yaml:8:20: peft.modules_to_save: not supported");
}

// A string target_modules is compiled by RE2 when the recipe is read: what RE2 cannot do
// (backreferences, lookarounds) or cannot parse is refused there, naming the key; a pattern a
// backtracking engine would take forever on is read at once.
TEST(RecipeErrors, TargetRegexesRe2CannotUseAreRefused) {
  const std::string backref =
      load_error(std::string(kMinimal) + "peft:\n  target_modules: '(q|v)_proj\\.\\1'\n");
  EXPECT_HAS(backref,
             "recipe.yaml:8:19: peft.target_modules: regular expression "
             "\"(q|v)_proj\\\\.\\\\1\" cannot be used: invalid escape sequence");
  EXPECT_HAS(backref, "no backreferences, lookarounds");
  EXPECT_HAS(load_error(std::string(kMinimal) + "peft:\n  target_modules: 'q_proj(?!x)'\n"),
             "peft.target_modules: regular expression \"q_proj(?!x)\" cannot be used: invalid "
             "perl operator");
  EXPECT_HAS(load_error(kMinimal, {"peft.target_modules=(q_proj"}),
             "--set peft.target_modules=(q_proj: peft.target_modules: regular expression "
             "\"(q_proj\" cannot be used: missing )");
  EXPECT_HAS(load_error(std::string(kMinimal) +
                        "peft:\n  target_modules: " + std::string(5000, 'a') + "\n"),
             "bytes long, over the limit of 4096");
  EXPECT_EQ(load_error(std::string(kMinimal) + "peft:\n  target_modules: '(a+)+$'\n"), "");
}

// PEFT reads the shorthand case-insensitively; an empty pattern would match nothing, found only
// once the model is loaded, so it is refused with the recipe.
TEST(RecipeParse, AllLinearInAnyCaseAndNoEmptyRegex) {
  RecipeFiles files;
  const Recipe r =
      load_recipe(files.write(std::string(kMinimal) + "peft:\n  target_modules: ALL-Linear\n"));
  EXPECT_EQ(r.peft.target_modules.form, TargetModules::Form::kAllLinear);
  EXPECT_HAS(load_error(std::string(kMinimal) + "peft:\n  target_modules: ''\n"),
             "peft.target_modules: expected a list of module names, a regular expression or "
             "\"all-linear\" (an empty regular expression matches no module)");
}

TEST(RecipeErrors, MalformedYamlGivesYamlCppsMark) {
  const std::string e = load_error("model:\n  name_or_path: [unclosed\ntraining:\n");
  EXPECT_HAS(e, "recipe.yaml:");
  EXPECT_HAS(e, "not valid YAML");
  const std::string tab = load_error("model:\n  name_or_path: a\n   bad: - x\n");
  EXPECT_HAS(tab, "recipe.yaml:3:");
}

TEST(RecipeErrors, OverrideWithAnUnknownKeyOrABadValue) {
  EXPECT_HAS(load_error(kMinimal, {"training.lr=1"}),
             "--set training.lr=1: unknown key training.lr (did you mean "
             "training.learning_rate?)");
  EXPECT_HAS(load_error(kMinimal, {"training.max_steps=ten"}),
             "--set training.max_steps=ten: training.max_steps: expected an integer, found "
             "\"ten\"");
  EXPECT_HAS(load_error(kMinimal, {"max_steps=10"}),
             "--set max_steps=10: unknown key max_steps (did you mean training.max_steps?)");
  EXPECT_HAS(load_error(kMinimal, {"train.seed=1"}),
             "--set train.seed=1: unknown section train (did you mean training?)");
  EXPECT_HAS(load_error(kMinimal, {"training.seed"}),
             "--set training.seed: expected "
             "section.key=value");
  EXPECT_HAS(load_error(kMinimal, {"training.optim=[adamw"}),
             "--set training.optim=[adamw: training.optim: the value is not valid YAML");
}

TEST(RecipeErrors, CrossKeyRulesNameWhereTheKeyWasSet) {
  // A peft key beside a saved adapter: the adapter's own config decides it.
  EXPECT_HAS(load_error(std::string(kMinimal) + "peft:\n  adapter_name_or_path: a\n  r: 16\n"),
             "recipe.yaml:9:3: peft.r: cannot be set together with peft.adapter_name_or_path "
             "(");
  EXPECT_HAS(load_error(std::string(kMinimal) + "peft:\n  adapter_name_or_path: a\n  r: 16\n"),
             "recipe.yaml:8:3): training continues that adapter, whose adapter_config.json "
             "decides r; remove peft.r");
  // A key of another method's config.
  EXPECT_HAS(load_error(std::string(kMinimal) + "  beta: 0.2\n"),
             "recipe.yaml:7:3: training.beta: is DPOConfig and KTOConfig's, and "
             "training.method is sft");
  EXPECT_HAS(load_error(std::string(kMinimal) + "peft:\n  lora_dropout: 1.5\n"),
             "recipe.yaml:8:3: peft.lora_dropout: expected a number in [0, 1), found 1.5");
  EXPECT_HAS(load_error(std::string(kMinimal) + "  per_device_train_batch_size: 0\n"),
             "recipe.yaml:7:3: training.per_device_train_batch_size: expected a positive "
             "integer, found 0");
  EXPECT_HAS(load_error(std::string(kMinimal) + "  warmup_steps: 2.5\n"),
             "training.warmup_steps: expected 0, a ratio in (0, 1) or a whole number of steps");
  EXPECT_HAS(load_error(std::string(kMinimal) + "  eval_strategy: epoch\n"),
             "recipe.yaml:7:3: training.eval_strategy: evaluation needs eval data");
  EXPECT_HAS(load_error(kMinimal, {"training.gradient_checkpointing=false",
                                   "training.gradient_checkpointing_save_matmuls=true"}),
             "training.gradient_checkpointing_save_matmuls: keeps products for checkpointing's "
             "recomputation, and training.gradient_checkpointing is false");
  EXPECT_HAS(load_error(kMinimal, {"data.kind=preference"}),
             "--set data.kind=preference: data.kind: preference data does not train with "
             "method sft");
  // A required key that is missing names the file.
  const std::string missing = load_error("model:\n  name_or_path: m\ndata:\n  train_files: t\n");
  EXPECT_HAS(missing, "recipe.yaml: training.output_dir: required");
}

TEST(RecipeErrors, DuplicateKeysAndBadShapes) {
  EXPECT_HAS(load_error(std::string(kMinimal) + "  output_dir: again\n"),
             "recipe.yaml:7:3: duplicate key training.output_dir (first at ");
  EXPECT_HAS(load_error("- model\n- peft\n"),
             "recipe.yaml:1:1: expected a mapping of the sections");
  EXPECT_HAS(load_error("model: gemma\n"),
             "recipe.yaml:1:8: model: expected a mapping of model keys, found \"gemma\"");
}

TEST(RecipeErrors, FilesOverOneMebibyteAreRefused) {
  RecipeFiles files;
  std::string big = kMinimal;
  big += "# " + std::string((1 << 20) + 16, 'x') + "\n";
  const std::filesystem::path path = files.write(big);
  EXPECT_HAS(error_of([&] { load_recipe(path); }), "over the 1 MiB a recipe may have");
  EXPECT_HAS(error_of([&] { load_recipe(files.write("", "none") / "missing.yaml"); }),
             "no such recipe file");
}

}  // namespace
}  // namespace gemma
