// The storage a GGUF export writes its weight matrices in (`--dtype`, a recipe's
// export.gguf_dtype), apart from the exporter: the recipe reader names these without linking the
// model.
#pragma once

#include <cstdint>
#include <string>

namespace gemma {

// What `--dtype` asks for: the storage of weight matrices, as the converter's `--outtype`. 1-D
// tensors, norms, the router and the `.scale` tensors are F32 whatever is chosen
// (export/gguf_gemma4.h).
enum class GgufOutType { kF32, kF16, kBF16, kQ8_0 };

// "f32", "f16", "bf16", "q8_0" (InputError otherwise) and back.
GgufOutType gguf_out_type_from_name(const std::string& name);
const char* gguf_out_type_name(GgufOutType type);
// general.file_type (llama_ftype): 0 all F32, 1 mostly F16, 32 mostly BF16, 7 mostly Q8_0.
uint32_t gguf_file_type(GgufOutType type);

}  // namespace gemma
