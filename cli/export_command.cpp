#include "cli/export_command.h"

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <optional>

#include "cli/cli_flags.h"
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
