// Reading a Hugging Face `tokenizer.json` of Gemma's kind (a BPE model with byte fallback, spaces
// normalised to ▁, no prefix space) as a SentencePiece BPE vocabulary, so libsentencepiece encodes
// it and no BPE engine is written here (gemma4-architecture.md §4.1).
//
// The conversion: every id keeps its piece; a piece's score is minus the rank of the first merge
// that produces it, so SentencePiece's "merge the best-scoring adjacent pair" follows the merge
// order; multi-character pieces no merge produces are UNUSED (BPE can never reach them);
// `<0xNN>` pieces are BYTE; special added tokens are CONTROL (never matched in text: a user who
// types `<turn|>` gets plain text), other added tokens USER_DEFINED (matched, as in HF).
#pragma once

#include <string>

#include "data/sentencepiece_model_proto.h"

namespace gemma {

// Parses `json_text`; `where` names the file in InputError messages.
SentencePieceModelSpec sentencepiece_spec_from_hf_json(const std::string& json_text,
                                                       const std::string& where);

}  // namespace gemma
