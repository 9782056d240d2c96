#include "cli/command_table.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <thread>

#include <torch/torch.h>

#include "cli/data_commands.h"
#include "cli/export_command.h"
#include "cli/launch_command.h"
#include "cli/model_commands.h"
#include "cli/plan_command.h"
#include "cli/plot_command.h"
#include "cli/text_commands.h"
#include "cli/train_command.h"
#include "io/atomic_output.h"
#include "io/bounded_json.h"
#include "io/file_identity.h"
#include "io/input_error.h"

namespace gemma {

namespace {

// Flags that several commands share, spelt once.
FlagSpec model_flag() {
  return {"model", "DIR", "", "model folder (config.json + safetensors)", true};
}
FlagSpec overwrite_flag() {
  return {"overwrite", "", "", "replace the output file if it exists (still atomically)"};
}
FlagSpec adapter_flag() {
  return {"adapter", "DIR", "", "attach a PEFT LoRA/DoRA adapter folder to the base model"};
}
FlagSpec load_in_4bit_flag() {
  return {"load-in-4bit", "", "", "hold every decoder Linear as frozen NF4 (QLoRA's base)"};
}
FlagSpec compute_dtype_flag() { return {"dtype", "f32|bf16", "f32", "compute dtype"}; }
FlagSpec device_flag() { return {"device", "cpu|cuda", "cpu", "where the model runs"}; }
FlagSpec attn_implementation_flag() {
  return {"attn-implementation", "sdpa|eager", "sdpa",
          "attention: LibTorch's fused kernel, or the eager reference (transformers' names)"};
}
FlagSpec no_step_decoder_flag() {
  return {"no-step-decoder", "", "",
          "decode each token through the LibTorch forward (the step decoder's reference; slower)"};
}
FlagSpec shard_size_flag() {
  return {"shard-size", "SIZE", "5GB",
          "largest safetensors shard (5GB, 500MB; a plain number is MB); more get an index"};
}
std::vector<FlagSpec> sampling_flags() {
  return {{"max-new-tokens", "N", "256", "most tokens to generate"},
          {"temperature", "T", "1.0", "sampling temperature; 0 is greedy"},
          {"top-k", "K", "64", "sample among the K most likely tokens (0: all)"},
          {"top-p", "P", "0.95", "nucleus sampling mass, in (0, 1]"},
          {"seed", "S", "0", "sampling seed"}};
}
template <typename... Lists>
std::vector<FlagSpec> concat(std::vector<FlagSpec> first, const Lists&... rest) {
  (first.insert(first.end(), rest.begin(), rest.end()), ...);
  return first;
}

std::vector<CommandSpec> make_table() {
  return {
      {"train",
       "fine-tune with a YAML recipe (also: gemma-train --recipe R)",
       "",
       {{"recipe", "FILE", "", "the recipe (YAML: model, peft, data, training, export)", true},
        {"set", "KEY=VALUE", "", "override a recipe key, e.g. training.max_steps=10", false, true},
        {"print-config", "", "", "print the resolved recipe (every key, defaults filled) and exit"},
        {"device-memory", "SIZE", "",
         "the memory the run must fit in (8GB, 7.5GiB; default: what the device has free)"},
        {"force", "", "", "run even when the memory plan says the run will not fit"}},
       run_train_command},
      {"plan",
       "predict a recipe's peak memory, component by component, from config.json alone (no "
       "weights), and whether it fits",
       "",
       {{"recipe", "FILE", "", "the recipe", true},
        {"set", "KEY=VALUE", "", "override a recipe key", false, true},
        {"model", "DIR|NAME", "",
         "plan for this model instead of the recipe's: a folder with config.json or a released "
         "variant (e2b, e4b, 31b, 26b-a4b)"},
        {"device-memory", "SIZE", "", "the memory to fit in (8GB, 7.5GiB); exit status 3 if not"},
        {"json", "", "", "print the plan as JSON (device_peak_bytes, components, changes)"}},
       run_plan_command},
      {"launch",
       "run a training on several processes (data parallel) through mpirun: "
       "gemma-train launch --nproc N -- --recipe R",
       "-- <train arguments>",
       {{"nproc", "N", "", "processes (ranks) in all", true},
        {"hosts", "H1,H2,...", "",
         "machines to spread them over (host or host:slots; default: this one)"},
        {"mpirun", "PATH", "mpirun", "the MPI launcher to run"},
        {"mpi-args", "ARGS", "",
         "more arguments for mpirun, space-separated, e.g. --mpi-args=\"--mca btl tcp,self\""},
        {"dry-run", "", "", "print the mpirun command line and exit"}},
       run_launch_command,
       "",
       true},
      {"validate-data",
       "check a training dataset (JSONL) row by row: JSON, fields, roles, turn order, lengths, "
       "duplicates",
       "(--recipe | --data ... --model)",
       {{"recipe", "FILE", "", "check the data files of this recipe, as the trainer reads them"},
        {"set", "KEY=VALUE", "", "override a recipe key", false, true},
        {"data", "FILE", "", "a JSONL file to check (instead of --recipe)", false, true},
        {"kind", "text|chat|completion|preference|kto", "",
         "the dataset shape (default: detected from the columns)"},
        {"model", "DIR", "", "with --data: the model folder whose tokenizer counts tokens"},
        {"max-length", "N", "1024", "with --data: rows longer than this many tokens are reported"},
        {"dump", "FILE", "",
         "also write the tokenized examples (input_ids, masks) as JSONL, as the trainer sees "
         "them"},
        overwrite_flag()},
       run_validate_data_command},
      {"plot",
       "draw train/eval loss and learning rate against step (SVG) from a run's metrics.jsonl",
       "",
       {{"metrics", "FILE", "", "a metrics.jsonl (the first argument may name it)", true},
        {"out", "FILE", "", "the SVG to write", true},
        overwrite_flag()},
       run_plot_command,
       "metrics"},
      {"init",
       "write a randomly initialised Gemma 4 checkpoint in the Hugging Face layout",
       "",
       {{"config", "FILE|NAME", "", "config.json path or a bundled name (e4b, tiny-e2b, demo, ...)",
         true},
        {"out", "DIR", "", "output folder (must not exist)", true},
        {"seed", "N", "0", "initialisation seed"},
        {"dtype", "bf16|f32", "bf16", "stored dtype"},
        shard_size_flag(),
        {"text-only", "", "", "Gemma4ForCausalLM layout (model.* keys) instead of multimodal"}},
       run_init_command},
      {"info",
       "print a checkpoint's config, parameter counts and used/ignored tensors",
       "",
       {model_flag()},
       run_info_command},
      {"logits",
       "write the logits of a token sequence as raw float32 [tokens, vocab]",
       "",
       {model_flag(),
        {"ids", "ID,ID,...", "", "token ids, comma-separated", true},
        {"out", "FILE", "", "output file", true},
        overwrite_flag(),
        adapter_flag(),
        load_in_4bit_flag(),
        compute_dtype_flag(),
        device_flag(),
        attn_implementation_flag(),
        {"trace", "DIR", "", "also dump each named step of one layer (see --trace-layer)"},
        {"trace-layer", "N", "0", "the layer --trace dumps"}},
       run_logits_command},
      {"quantize",
       "write a bitsandbytes NF4 double-quant copy of a checkpoint",
       "",
       {model_flag(),
        {"out", "DIR", "", "output folder (must not exist)", true},
        shard_size_flag()},
       run_quantize_command},
      {"adapter",
       "write a fresh PEFT LoRA/DoRA adapter folder for a model",
       "",
       {model_flag(),
        {"out", "DIR", "", "output folder (must not exist)", true},
        {"r", "N", "8", "LoRA rank"},
        {"alpha", "A", "", "lora_alpha (default: r)"},
        {"dropout", "P", "0", "lora_dropout, in [0, 1)"},
        {"dora", "", "", "DoRA (use_dora)"},
        {"rslora", "", "", "rsLoRA scaling alpha/sqrt(r)"},
        {"target-modules", "NAME,NAME,...", "",
         "PEFT's target_modules (default: q/k/v/o, gate/up/down)"},
        {"target-regex", "RE", "", "target modules by a regex over the whole module path"},
        {"seed", "S", "0", "initialisation seed"},
        {"init", "peft|random", "peft", "peft: B = 0 (PEFT's default); random: B random too"}},
       run_adapter_command},
      {"merge",
       "fold a PEFT adapter into the weights and write a plain HF checkpoint",
       "",
       {model_flag(),
        {"adapter", "DIR", "", "the PEFT adapter folder", true},
        {"out", "DIR", "", "output folder (must not exist)", true},
        {"dtype", "bf16|f32", "bf16", "stored dtype"},
        shard_size_flag()},
       run_merge_command},
      {"export",
       "write a model (with an adapter merged) for another runtime: GGUF for llama.cpp/Ollama",
       "",
       {{"format", "gguf", "", "output format", true},
        model_flag(),
        adapter_flag(),
        {"out", "FILE", "", "output file (must not exist)", true},
        {"dtype", "f32|f16|bf16|q8_0", "bf16", "storage of the weight matrices"}},
       run_export_command},
      {"generate", "generate text with the chat template, a KV cache and Gemma's sampling",
       "(--prompt | --messages | --input with --output)",
       concat({model_flag(),
               {"prompt", "TEXT", "", "one user message"},
               {"messages", "FILE.json", "", "OpenAI/TRL-style messages (or {messages, tools})"},
               {"input", "FILE.jsonl", "", "batch mode: one {prompt} or {messages} per line"},
               {"output", "FILE.jsonl", "", "batch mode: where completions go"},
               {"batch-size", "N", "8", "batch mode: prompts per left-padded batch"},
               overwrite_flag()},
              sampling_flags(),
              std::vector<FlagSpec>{{"raw", "", "", "no chat template: <bos> + the plain text"},
                                    {"ids", "", "", "print token ids instead of text"},
                                    {"thinking", "", "", "enable thinking in the template"},
                                    {"no-cache", "", "", "recompute the whole sequence every step"},
                                    {"warmup", "", "",
                                     "first run the (first batch's) prompt untimed with 2 new "
                                     "tokens: the speeds then are a warm process's, as "
                                     "llama-bench measures them"},
                                    no_step_decoder_flag(),
                                    adapter_flag(),
                                    load_in_4bit_flag(),
                                    compute_dtype_flag(),
                                    device_flag(),
                                    attn_implementation_flag()}),
       run_generate_command},
      {"chat", "an interactive conversation (the KV cache is kept between turns)", "",
       concat(
           {model_flag(),
            {"system", "TEXT", "", "a system message"},
            {"thinking", "", "", "enable thinking in the template"}},
           sampling_flags(),
           std::vector<FlagSpec>{no_step_decoder_flag(), adapter_flag(), load_in_4bit_flag(),
                                 compute_dtype_flag(), device_flag(), attn_implementation_flag()}),
       run_chat_command},
      {"tokenize",
       "print token ids of a text or of a rendered conversation",
       "(--text | --messages)",
       {model_flag(),
        {"text", "TEXT", "", "plain text"},
        {"bos", "", "", "with --text: start with <bos>"},
        {"messages", "FILE.json", "", "a conversation, rendered with the chat template"}},
       run_tokenize_command},
  };
}

std::string flag_usage(const FlagSpec& f) {
  std::string s = "--" + f.name + (f.value.empty() ? "" : " " + f.value);
  if (f.repeatable) s += " ...";
  return f.required ? s : "[" + s + "]";
}

const CommandSpec* find_command(const std::string& name) {
  for (const CommandSpec& c : command_table()) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

// LibTorch's intra-op pool may start with one thread (platform.md, trap 2): set it explicitly.
void set_threads(const CliFlags& flags) {
  int64_t threads = static_cast<int64_t>(std::thread::hardware_concurrency());
  if (flags.has("threads")) {
    threads = flags.integer("threads");
    // More threads than this is a typo, and OpenMP would try to start them all.
    constexpr int64_t kMaxThreads = 1024;
    if (threads <= 0 || threads > kMaxThreads)
      throw InputError(flags.command() + ": --threads expects an integer from 1 to " +
                       std::to_string(kMaxThreads) + ", found \"" + flags.value("threads") + "\"");
  }
  if (threads > 0) torch::set_num_threads(static_cast<int>(threads));
}

bool is_output_flag(const FlagSpec& f) {
  return f.name == "out" || f.name == "output" || f.name == "dump" || f.name == "trace";
}

bool is_path_flag(const FlagSpec& f) {
  return f.value.rfind("FILE", 0) == 0 || f.value.rfind("DIR", 0) == 0;
}

// Every path the command reads is noted first (a folder: the files in it), so that an output
// naming one of them, or a symlink, a device or an existing folder, is refused before any work
// (io/atomic_output.h); the writers check again when they publish.
void check_outputs_before_work(const CommandSpec& command, const CliFlags& flags) {
  for (const FlagSpec& f : command.flags) {
    if (is_output_flag(f) || !is_path_flag(f) || !flags.has(f.name)) continue;
    const std::vector<std::string> given =
        f.repeatable ? flags.values(f.name) : std::vector<std::string>{flags.value(f.name)};
    for (const std::string& path : given) {
      std::error_code ec;
      if (std::filesystem::is_directory(path, ec)) {
        for (std::filesystem::directory_iterator it(path, ec), end; !ec && it != end;
             it.increment(ec)) {
          if (it->is_regular_file(ec)) note_input_file(it->path());
        }
      } else {
        note_input_file(path);
      }
    }
  }
  for (const FlagSpec& f : command.flags) {
    if (!is_output_flag(f) || !flags.has(f.name)) continue;
    const std::string path = flags.value(f.name);
    if (f.value == "DIR") {
      check_output_folder(path);
    } else {
      // Replaced only where the command has --overwrite and it is given.
      const bool must_not_exist = f.help.find("must not exist") != std::string::npos;
      check_output_file(path, must_not_exist ? ExistingOutput::kRefuse : ExistingOutput::kReplace);
      std::error_code ec;
      if (!must_not_exist && !flags.has("overwrite") && std::filesystem::exists(path, ec))
        throw InputError(path + ": already exists; give --overwrite to replace it");
    }
  }
}

int run_command(const CommandSpec& command, std::vector<std::string> args) {
  if (!command.positional.empty() && !args.empty() && args[0].rfind('-', 0) != 0)
    args.insert(args.begin(), "--" + command.positional);
  std::vector<std::string> trailing;
  if (command.takes_command_line) {
    const auto dashes = std::find(args.begin(), args.end(), "--");
    if (dashes != args.end()) {
      trailing.assign(dashes + 1, args.end());
      args.erase(dashes, args.end());
    }
  }
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << command_help(command);
      return 0;
    }
  }
  CliFlags flags(command.name, args, concat(command.flags, global_flags()));
  flags.set_trailing(std::move(trailing));
  set_threads(flags);
  check_outputs_before_work(command, flags);
  return command.run(flags);
}

}  // namespace

const std::vector<CommandSpec>& command_table() {
  static const std::vector<CommandSpec> table = make_table();
  return table;
}

const std::vector<FlagSpec>& global_flags() {
  static const std::vector<FlagSpec> flags = {
      {"threads", "N", "", "CPU threads (default: every hardware thread)"}};
  return flags;
}

std::string usage_line(const CommandSpec& command) {
  std::string line = "gemma-train " + command.name;
  if (!command.usage_note.empty()) line += " " + command.usage_note;
  for (const FlagSpec& f : command.flags) line += " " + flag_usage(f);
  return line;
}

std::string command_help(const CommandSpec& command) {
  std::ostringstream out;
  out << "usage: " << usage_line(command) << "\n\n" << command.summary << "\n\nflags:\n";
  size_t width = 0;
  const std::vector<FlagSpec> all = concat(command.flags, global_flags());
  for (const FlagSpec& f : all)
    width = std::max(width, f.name.size() + (f.value.empty() ? 0 : f.value.size() + 1));
  for (const FlagSpec& f : all) {
    std::string left = "--" + f.name + (f.value.empty() ? "" : " " + f.value);
    out << "  " << left << std::string(width + 4 - left.size(), ' ') << f.help;
    if (!f.fallback.empty()) out << " (default: " << f.fallback << ")";
    if (f.required) out << " (required)";
    if (f.repeatable) out << " (repeatable)";
    out << "\n";
  }
  return out.str();
}

std::string binary_help() {
  std::ostringstream out;
  out << "usage: gemma-train <command> [flags]   (gemma-train <command> --help for its flags)\n"
      << "       gemma-train --recipe FILE [--set KEY=VALUE ...]   (the train command)\n\n"
      << "commands:\n";
  for (const CommandSpec& c : command_table()) {
    out << "  " << c.name << std::string(c.name.size() < 10 ? 10 - c.name.size() : 1, ' ')
        << c.summary << "\n";
  }
  out << "\nevery command also takes:\n";
  for (const FlagSpec& f : global_flags())
    out << "  --" << f.name << " " << f.value << "   " << f.help << "\n";
  return out.str();
}

int run_cli(std::vector<std::string> args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << binary_help();
    return args.empty() ? 2 : 0;
  }
  try {
    // `gemma-train --recipe R ...` is the train command, as users of TRL scripts expect one
    // entry point.
    if (args[0] == "--recipe" || args[0].rfind("--recipe=", 0) == 0 || args[0] == "--set" ||
        args[0].rfind("--set=", 0) == 0) {
      args.insert(args.begin(), "train");
    }
    const CommandSpec* command = find_command(args[0]);
    if (command == nullptr) {
      std::cerr << "gemma-train: unknown command \"" << args[0] << "\"\n\n" << binary_help();
      return 2;
    }
    remove_temporaries_on_signals();
    const NotingInputs noting;
    const int rc = run_command(*command, std::vector<std::string>(args.begin() + 1, args.end()));
    // A full disk or a closed pipe on stdout is a failed command, not a success.
    std::cout.flush();
    if (!std::cout || std::fflush(stdout) != 0) {
      std::cerr << "gemma-train: error: stdout: write failed: " << std::strerror(errno) << "\n";
      return 2;
    }
    return rc;
  } catch (const InputError& e) {
    std::cerr << "gemma-train: error: " << e.what() << "\n";
    return 2;
  } catch (const std::filesystem::filesystem_error& e) {
    // A path the file system refuses (too long, no permission, a loop of links) is the user's to
    // mend, like an InputError: exit 2, naming the path.
    std::cerr << "gemma-train: error: " << error_excerpt(e.path1().string(), 200) << ": "
              << e.code().message() << "\n";
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "gemma-train: internal error: " << e.what_without_backtrace() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "gemma-train: error: " << e.what() << "\n";
    return 3;
  }
}

}  // namespace gemma
