#include "cli/export_command.h"

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <optional>

#include "cli/cli_flags.h"
#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "export/gguf_gemma4.h"
#include "io/input_error.h"
#include "peft/merged_checkpoint.h"

namespace gemma {
namespace fs = std::filesystem;

int run_export_command(const CliFlags& flags) {
  const std::string format = flags.required("format");
  if (format != "gguf") {
    throw InputError("export: --format expects gguf, found \"" + format + "\"");
  }
  const fs::path model_dir = flags.required("model");
  const fs::path out = flags.required("out");
  // bf16 by default: what llama.cpp's converter ("--outtype auto") picks for Gemma 4's bf16
  // checkpoints; it keeps the weights' own precision at half the size of f32.
  const GgufOutType out_type = gguf_out_type_from_name(flags.value("dtype"));
  // Refuse an existing output before reading any weights.
  if (fs::exists(out)) {
    throw InputError(out.string() + ": output file already exists; choose a new path");
  }
  std::optional<fs::path> adapter;
  if (const auto a = flags.optional("adapter")) adapter = fs::path(*a);
  // The tokenizer files a GGUF carries, checked before any weights are read: tokenizer.json as
  // `tokenize` loads it, and the chat template llama.cpp will render.
  if (fs::exists(model_dir / "tokenizer.json"))
    Tokenizer::from_hf_json(model_dir / "tokenizer.json");
  const Gemma4GgufVocab vocab = read_gemma4_gguf_vocab(model_dir);
  if (vocab.chat_template) {
    check_chat_template_text(*vocab.chat_template,
                             model_dir.string() + ": tokenizer chat template");
    const ChatTemplateInspection inspection = inspect_chat_template(*vocab.chat_template);
    if (!inspection.recognized)
      std::cerr << "gemma-train: note: " << model_dir.string()
                << ": the chat template copied into the GGUF does not look like Gemma 4's; "
                   "llama.cpp will render conversations with it as it is\n";
  }

  const MergedCheckpoint checkpoint(model_dir, adapter);
  const Gemma4GgufExport report = export_gemma4_gguf(checkpoint, out, out_type);
  std::cout << "wrote " << out.string() << " (gemma4 GGUF, " << report.tensor_count << " tensors, "
            << report.n_vocab << " tokens, weights " << gguf_out_type_name(out_type)
            << (adapter ? ", adapter merged" : "") << ", " << std::fixed << std::setprecision(1)
            << static_cast<double>(report.file_bytes) / 1e6 << " MB)\n";
  for (const std::string& caveat : report.caveats) std::cout << "note: " << caveat << "\n";
  return 0;
}

}  // namespace gemma
