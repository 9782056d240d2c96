// gemma-train: one binary for Gemma 4 fine-tuning. This file only dispatches subcommands and turns
// errors into one line on stderr and an exit code (2: bad input, 3: internal error).
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "model/input_error.h"
#include "trainer/export_command.h"
#include "trainer/model_commands.h"
#include "trainer/text_commands.h"

namespace {

constexpr const char* kUsage =
    "usage: gemma-train <command> [flags]\n"
    "commands:\n"
    "  init    --config <file|name> --out <dir> [--seed N] [--dtype bf16|f32] [--shard-size MB] "
    "[--text-only]\n"
    "  logits  --model <dir> --ids <id,id,...> --out <file> [--adapter <dir>] [--load-in-4bit] "
    "[--dtype f32|bf16] "
    "[--device "
    "cpu|cuda]\n"
    "  info    --model <dir>\n"
    "  quantize --model <dir> --out <dir> [--shard-size MB]\n"
    "  adapter --model <dir> --out <dir> [--r N] [--alpha A] [--dropout P] [--dora] [--rslora]\n"
    "          [--target-modules a,b,... | --target-regex RE] [--seed S] [--init peft|random]\n"
    "  merge   --model <dir> --adapter <dir> --out <dir> [--dtype bf16|f32] [--shard-size MB]\n"
    "  export  --format gguf --model <dir> [--adapter <dir>] --out <file.gguf> "
    "[--dtype f32|f16|bf16|q8_0]\n"
    "  generate --model <dir> (--prompt TEXT | --messages FILE.json | --input prompts.jsonl "
    "--output out.jsonl)\n"
    "           [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--raw] "
    "[--ids]\n"
    "           [--thinking] [--batch-size N] [--no-cache] [--adapter <dir>] [--dtype f32|bf16] "
    "[--device cpu|cuda]\n"
    "           [--load-in-4bit]\n"
    "  chat    --model <dir> [--system TEXT] [--thinking] [sampling flags as generate]\n"
    "  tokenize --model <dir> (--text TEXT [--bos] | --messages FILE.json)\n"
    "global: --threads N (default: all hardware threads)\n";

// LibTorch's intra-op pool may start with one thread (platform.md, trap 2): set it explicitly.
void set_threads(std::vector<std::string>& args) {
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--threads") {
      if (i + 1 >= args.size()) throw gemma::InputError("--threads needs a value");
      try {
        threads = std::stoi(args[i + 1]);
      } catch (const std::exception&) {
        threads = 0;
      }
      if (threads <= 0)
        throw gemma::InputError("--threads expects a positive integer, found \"" + args[i + 1] +
                                "\"");
      args.erase(args.begin() + static_cast<long>(i), args.begin() + static_cast<long>(i) + 2);
      break;
    }
  }
  if (threads > 0) torch::set_num_threads(threads);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  try {
    set_threads(args);
    if (command == "init") return gemma::run_init_command(args);
    if (command == "logits") return gemma::run_logits_command(args);
    if (command == "info") return gemma::run_info_command(args);
    if (command == "quantize") return gemma::run_quantize_command(args);
    if (command == "adapter") return gemma::run_adapter_command(args);
    if (command == "merge") return gemma::run_merge_command(args);
    if (command == "export") return gemma::run_export_command(args);
    if (command == "generate") return gemma::run_generate_command(args);
    if (command == "chat") return gemma::run_chat_command(args);
    if (command == "tokenize") return gemma::run_tokenize_command(args);
    std::cerr << "gemma-train: unknown command \"" << command << "\"\n" << kUsage;
    return 2;
  } catch (const gemma::InputError& e) {
    std::cerr << "gemma-train: error: " << e.what() << "\n";
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "gemma-train: internal error: " << e.what_without_backtrace() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "gemma-train: error: " << e.what() << "\n";
    return 3;
  }
}
