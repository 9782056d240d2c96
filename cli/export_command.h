// `gemma-train export`: writes a checkpoint (with a PEFT adapter folded in, if given) in a format
// other runtimes load. `--format gguf` is llama.cpp's `gemma4` GGUF (model/gguf_gemma4.h). Other
// tools script it, so its flags and output line are stable.
#pragma once

#include "cli/cli_flags.h"

namespace gemma {

// export --format gguf --model <dir> [--adapter <dir>] --out <file.gguf>
//        [--dtype f32|f16|bf16|q8_0]
int run_export_command(const CliFlags& flags);

}  // namespace gemma
