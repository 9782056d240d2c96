// libFuzzer target: tokenizer.json text -> SentencePiece model -> libsentencepiece ->
// encode/decode.
#include <sentencepiece_processor.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "data/hf_tokenizer_json.h"
#include "io/input_error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto spec = gemma::sentencepiece_spec_from_hf_json(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    sentencepiece::SentencePieceProcessor sp;
    if (sp.LoadFromSerializedProto(gemma::serialize_sentencepiece_model(spec)).ok()) {
      std::vector<int> ids;
      (void)sp.Encode("Hello  world\n\u00e9\U0001F600", &ids);
      std::string text;
      (void)sp.Decode(ids, &text);
    }
  } catch (const gemma::InputError&) {
  }
  return 0;
}
