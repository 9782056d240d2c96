// Gemma 4 as llama.cpp's `gemma4` GGUF (gguf-gemma4.md): the metadata keys of §2, the tensor table
// of §3 (checkpoint key -> GGUF name, ggml shape, storage type), the synthesised rope_freqs, and
// the tokenizer keys taken from the checkpoint's tokenizer files. `gemma-train export --format
// gguf` is export_gemma4_gguf(); llama.cpp, Ollama and LM Studio load its output.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "export/gguf_out_type.h"
#include "io/gguf_writer.h"
#include "model/gemma4_config.h"

namespace gemma {

class MergedCheckpoint;

// The tokenizer as llama.cpp's gemma4 vocabulary reads it (§2, "Tokenizer keys").
struct Gemma4GgufVocab {
  std::vector<std::string> tokens;   // id order: the base vocabulary, then added tokens
  std::vector<int32_t> token_types;  // 1 normal, 3 control, 4 user-defined, 6 byte
  std::vector<std::string> merges;   // "left right"
  std::vector<std::pair<std::string, uint32_t>> special_ids;  // full GGUF key, token id
  std::optional<bool> add_eos;
  std::optional<std::string> chat_template;
};

// Reads `dir`/tokenizer.json with tokenizer_config.json, chat_template.jinja and config.json when
// present. InputError naming the file when tokenizer.json is missing or not a BPE vocabulary.
Gemma4GgufVocab read_gemma4_gguf_vocab(const std::filesystem::path& dir);

// One tensor of the file and where its values come from.
struct Gemma4GgufTensor {
  std::string name;                   // GGUF name, "blk.3.attn_q.weight"
  std::string source;                 // checkpoint key; empty for the synthesised rope_freqs
  std::vector<int64_t> source_shape;  // its shape in the checkpoint (PyTorch order)
  std::vector<int64_t> ne;            // ggml order; the last entry may keep fewer rows (vocab)
  GgmlType type = GgmlType::kF32;
};

// Every tensor of the GGUF for a checkpoint of `config` whose decoder keys start with `prefix`,
// for a vocabulary of `n_vocab` tokens: embedding tables keep their first n_vocab rows; the K/V
// tensors of KV-shared layers (never read) are left out; `output.weight` only with `has_lm_head`.
std::vector<Gemma4GgufTensor> gemma4_gguf_tensors(const Gemma4Config& config,
                                                  const std::string& prefix, int64_t n_vocab,
                                                  GgufOutType out_type, bool has_lm_head);

// The storage of tensor `name` of `ne` under `out_type`, by the converter's rules (§3): F32 for
// 1-D tensors, norms, the router and non-`.weight` names; F16 where Q8_0 has no whole blocks.
GgmlType gemma4_gguf_storage(const std::string& name, const std::vector<int64_t>& ne,
                             GgufOutType out_type);

// rope_freqs.weight [d_full/2]: 1 for the pairs proportional RoPE rotates, 1e30 (angle ~0) for the
// rest (§3, global tensors).
std::vector<float> gemma4_rope_freqs(const Gemma4Config& config);

// InputError for a config llama.cpp's gemma4 graph cannot compute (RoPE it cannot express).
void check_gemma4_gguf_support(const Gemma4Config& config, const std::string& where);
// Settings the file carries that llama.cpp computes differently or cannot run, one sentence each.
std::vector<std::string> gemma4_gguf_caveats(const Gemma4Config& config);

// The §2 metadata of `config` and `vocab`.
void add_gemma4_gguf_metadata(GgufWriter& writer, const Gemma4Config& config,
                              const Gemma4GgufVocab& vocab, GgufOutType out_type,
                              const std::string& model_name);

struct Gemma4GgufExport {
  size_t tensor_count = 0;
  uint64_t file_bytes = 0;
  int64_t n_vocab = 0;
  std::vector<std::string> caveats;
};

// Writes `checkpoint` (adapter already folded in) as a GGUF file `out`, which must not exist yet.
// The header is written from shapes alone, then each tensor is read, converted and written in
// turn; the file appears only when complete (AtomicFileWriter).
Gemma4GgufExport export_gemma4_gguf(const MergedCheckpoint& checkpoint,
                                    const std::filesystem::path& out, GgufOutType out_type);

}  // namespace gemma
