#include "export/gguf_out_type.h"

#include "io/input_error.h"

namespace gemma {

GgufOutType gguf_out_type_from_name(const std::string& name) {
  if (name == "f32") return GgufOutType::kF32;
  if (name == "f16") return GgufOutType::kF16;
  if (name == "bf16") return GgufOutType::kBF16;
  if (name == "q8_0") return GgufOutType::kQ8_0;
  throw InputError("GGUF dtype \"" + name + "\": expected f32, f16, bf16 or q8_0");
}

const char* gguf_out_type_name(GgufOutType type) {
  switch (type) {
    case GgufOutType::kF32:
      return "f32";
    case GgufOutType::kF16:
      return "f16";
    case GgufOutType::kBF16:
      return "bf16";
    case GgufOutType::kQ8_0:
      return "q8_0";
  }
  return "?";
}

uint32_t gguf_file_type(GgufOutType type) {
  switch (type) {
    case GgufOutType::kF32:
      return 0;  // LLAMA_FTYPE_ALL_F32
    case GgufOutType::kF16:
      return 1;  // LLAMA_FTYPE_MOSTLY_F16
    case GgufOutType::kBF16:
      return 32;  // LLAMA_FTYPE_MOSTLY_BF16
    case GgufOutType::kQ8_0:
      return 7;  // LLAMA_FTYPE_MOSTLY_Q8_0
  }
  return 0;
}

}  // namespace gemma
