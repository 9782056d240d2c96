#include "cli/data_commands.h"

#include <filesystem>
#include <iostream>

#include "data/dataset_rows.h"
#include "data/dataset_validation.h"
#include "data/preference_dataset.h"
#include "data/sft_dataset.h"
#include "data/tokenizer.h"
#include "io/atomic_output.h"
#include "io/input_error.h"
#include "trainer/recipe.h"

namespace gemma {
namespace fs = std::filesystem;

namespace {

// One set of files to check, with how the trainer reads them.
struct DataCheck {
  std::string name;  // "train", "eval", "data"
  std::vector<fs::path> files;
};

struct ValidateSetup {
  std::vector<DataCheck> checks;
  std::optional<Tokenizer> tokenizer;
  fs::path model_dir;
  SftDataOptions options;
  std::optional<TrainingMethod> method;  // with --recipe
  int64_t kto_kl_batch = 0;  // with a KTO recipe: its micro-batch, over which KL pairs rotate
};

std::optional<DatasetKind> dataset_kind_of(DataKind kind) {
  switch (kind) {
    case DataKind::kAuto:
      return std::nullopt;
    case DataKind::kText:
      return DatasetKind::kText;
    case DataKind::kChat:
      return DatasetKind::kChat;
    case DataKind::kCompletion:
      return DatasetKind::kCompletion;
    case DataKind::kPreference:
      return DatasetKind::kPreference;
    case DataKind::kKto:
      return DatasetKind::kKto;
  }
  return std::nullopt;
}

ValidateSetup setup_from_recipe(const CliFlags& flags) {
  for (const char* flag : {"data", "kind", "model", "max-length"}) {
    if (flags.has(flag)) {
      throw InputError(std::string("validate-data: --") + flag +
                       " goes with --data; with --recipe the recipe says it (override with --set)");
    }
  }
  const Recipe recipe = load_recipe(flags.required("recipe"), flags.values("set"));
  ValidateSetup s;
  s.method = recipe.training.method;
  if (s.method == TrainingMethod::kKto)
    s.kto_kl_batch = recipe.training.per_device_train_batch_size;
  s.model_dir = recipe.model.name_or_path;
  s.tokenizer = Tokenizer::from_folder(s.model_dir);
  SftDataOptions& o = s.options;
  o.kind = dataset_kind_of(recipe.data.kind);
  o.max_length = recipe.training.max_length;
  o.truncation = recipe.training.truncation_mode == TruncationMode::kKeepEnd
                     ? SftTruncation::kKeepEnd
                     : SftTruncation::kKeepStart;
  o.packing = !recipe.training.packing                                        ? SftPacking::kNone
              : recipe.training.packing_strategy == PackingStrategy::kWrapped ? SftPacking::kWrapped
                                                                              : SftPacking::kBfd;
  o.completion_only_loss = recipe.training.completion_only_loss;
  o.assistant_only_loss = recipe.training.assistant_only_loss;
  o.skip_invalid = recipe.data.skip_invalid;
  read_tokenizer_settings(s.model_dir, &o);
  s.checks.push_back({"train", {recipe.data.train_files.begin(), recipe.data.train_files.end()}});
  if (!recipe.data.eval_files.empty())
    s.checks.push_back({"eval", {recipe.data.eval_files.begin(), recipe.data.eval_files.end()}});
  return s;
}

ValidateSetup setup_from_flags(const CliFlags& flags) {
  if (flags.has("set")) throw InputError("validate-data: --set goes with --recipe");
  ValidateSetup s;
  const std::vector<std::string> data = flags.values("data");
  if (data.empty())
    throw InputError("validate-data: give --recipe FILE, or --data FILE (and --model DIR)");
  s.checks.push_back({"data", {data.begin(), data.end()}});
  if (flags.has("kind")) s.options.kind = dataset_kind_from_name(flags.value("kind"));
  const int64_t max_length = flags.integer("max-length");
  if (max_length <= 0) {
    throw InputError("--max-length: expected a positive number of tokens, found " +
                     std::to_string(max_length));
  }
  s.options.max_length = max_length;
  if (const auto model = flags.optional("model")) {
    s.model_dir = *model;
    s.tokenizer = Tokenizer::from_folder(s.model_dir);
    read_tokenizer_settings(s.model_dir, &s.options);
  }
  return s;
}

// The dump must not land on an input (the trainer's data) nor through a symlink.
void check_dump_path(const fs::path& dump, const ValidateSetup& s) {
  std::error_code ec;
  if (fs::is_symlink(dump, ec))
    throw InputError(dump.string() + ": --dump will not write through a symlink");
  if (!fs::exists(dump, ec)) return;
  for (const DataCheck& check : s.checks) {
    for (const fs::path& f : check.files) {
      if (fs::equivalent(dump, f, ec)) {
        throw InputError(dump.string() + ": --dump names an input file (" + f.string() +
                         "); choose another path");
      }
    }
  }
}

// Whether the recipe's method trains on this shape (KTO also takes paired preference rows,
// which TRL unpairs).
bool method_takes(TrainingMethod method, DatasetKind kind) {
  switch (method) {
    case TrainingMethod::kSft:
      return kind == DatasetKind::kText || kind == DatasetKind::kChat ||
             kind == DatasetKind::kCompletion;
    case TrainingMethod::kDpo:
      return kind == DatasetKind::kPreference;
    case TrainingMethod::kKto:
      return kind == DatasetKind::kKto || kind == DatasetKind::kPreference;
  }
  return false;
}

}  // namespace

int run_validate_data_command(const CliFlags& flags) {
  ValidateSetup s = flags.has("recipe") ? setup_from_recipe(flags) : setup_from_flags(flags);
  const std::optional<std::string> dump = flags.optional("dump");
  if (dump) {
    if (!s.tokenizer) throw InputError("validate-data: --dump needs --model (the tokenizer)");
    check_dump_path(*dump, s);
  }

  bool bad = false;
  std::vector<std::string> dumped;  // one JSON line per example
  for (const DataCheck& check : s.checks) {
    if (s.checks.size() > 1) std::cout << "== " << check.name << " ==\n";
    const DatasetValidationReport report =
        validate_dataset(check.files, s.tokenizer ? &*s.tokenizer : nullptr, s.options,
                         [](const std::string& line) { std::cout << line << "\n"; });
    std::cout << validation_summary(report, s.options);
    if (report.rows == 0) {
      std::cout << check.name << ": no rows (empty dataset)\n";
      bad = true;
    }
    if (report.bad_rows > 0) bad = true;
    if (s.method && report.kind && !method_takes(*s.method, *report.kind)) {
      std::cout << check.name << ": " << dataset_kind_name(*report.kind)
                << " rows do not suit training.method " << recipe_name(*s.method) << "\n";
      bad = true;
    }
    if (dump && report.rows > 0 && report.kind) {
      SftDataOptions o = s.options;
      o.skip_invalid = true;  // the dump holds what the good rows become
      o.kind = report.kind;
      const bool kto = *report.kind == DatasetKind::kKto || s.method == TrainingMethod::kKto;
      if (kto) {
        for (const KtoExample& e : read_kto_examples(check.files, *s.tokenizer, o, s.kto_kl_batch))
          dumped.push_back(kto_example_json(e));
      } else if (*report.kind == DatasetKind::kPreference) {
        for (const PreferenceExample& e : read_preference_examples(check.files, *s.tokenizer, o))
          dumped.push_back(preference_example_json(e));
      } else {
        std::vector<SftExample> examples = read_sft_examples(check.files, *s.tokenizer, o);
        if (o.packing != SftPacking::kNone)
          examples = pack_sft_examples(examples, o.max_length.value_or(0), o.packing);
        for (const SftExample& e : examples) dumped.push_back(sft_example_json(e));
      }
    }
  }
  if (dump) {
    AtomicFileWriter out(*dump, flags.existing_output());
    for (const std::string& e : dumped) {
      const std::string line = e + "\n";
      out.write(line.data(), line.size());
    }
    out.commit();
    std::cout << "wrote " << dumped.size() << " examples to " << *dump << "\n";
  }
  return bad ? 2 : 0;
}

}  // namespace gemma
