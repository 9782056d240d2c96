// SentencePieceModelSpec: the parts of SentencePiece's ModelProto that describe a BPE vocabulary,
// and its serialization in protobuf wire format (field numbers of sentencepiece_model.proto), so
// a vocabulary read from elsewhere (HF tokenizer.json) can be loaded by libsentencepiece without
// linking protobuf's generated classes.
#pragma once

#include <string>
#include <vector>

namespace gemma {

// ModelProto.SentencePiece.Type
enum class PieceType : int {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

struct SentencePiece {
  std::string piece;
  float score = 0.0f;
  PieceType type = PieceType::kNormal;
};

struct SentencePieceModelSpec {
  std::vector<SentencePiece> pieces;  // in id order
  bool byte_fallback = true;
  int unk_id = 0;
  // NormalizerSpec: Gemma's is "identity" with spaces escaped to ▁ and nothing else.
  bool add_dummy_prefix = false;
  bool remove_extra_whitespaces = false;
  bool escape_whitespaces = true;
};

// A serialized ModelProto (model_type BPE) that SentencePieceProcessor::LoadFromSerializedProto
// takes.
std::string serialize_sentencepiece_model(const SentencePieceModelSpec& spec);

}  // namespace gemma
