#include "data/sentencepiece_model_proto.h"

#include <cstdint>
#include <cstring>

namespace gemma {

namespace {

// Protobuf wire format: a key is (field << 3 | wire type); 0 varint, 2 length-delimited, 5 fixed32.
class ProtoWriter {
 public:
  void varint_field(int field, uint64_t value) {
    key(field, 0);
    varint(value);
  }
  void int32_field(int field, int32_t value) {  // negative int32 are sign-extended to 64 bits
    varint_field(field, static_cast<uint64_t>(static_cast<int64_t>(value)));
  }
  void bool_field(int field, bool value) { varint_field(field, value ? 1 : 0); }
  void float_field(int field, float value) {
    key(field, 5);
    uint32_t bits = 0;
    std::memcpy(&bits, &value, 4);
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
  }
  void bytes_field(int field, const std::string& bytes) {
    key(field, 2);
    varint(bytes.size());
    out_ += bytes;
  }
  const std::string& bytes() const { return out_; }

 private:
  void key(int field, int wire_type) { varint((static_cast<uint64_t>(field) << 3) | wire_type); }
  void varint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  std::string out_;
};

// Field numbers of sentencepiece_model.proto.
enum : int {
  kModelPieces = 1,
  kModelTrainerSpec = 2,
  kModelNormalizerSpec = 3,
  kPiecePiece = 1,
  kPieceScore = 2,
  kPieceType = 3,
  kTrainerModelType = 3,
  kTrainerVocabSize = 4,
  kTrainerByteFallback = 35,
  kTrainerUnkId = 40,
  kTrainerBosId = 41,
  kTrainerEosId = 42,
  kTrainerPadId = 43,
  kNormalizerName = 1,
  kNormalizerAddDummyPrefix = 3,
  kNormalizerRemoveExtraWhitespaces = 4,
  kNormalizerEscapeWhitespaces = 5,
};
constexpr int kModelTypeBpe = 2;

}  // namespace

std::string serialize_sentencepiece_model(const SentencePieceModelSpec& spec) {
  ProtoWriter model;
  for (const SentencePiece& p : spec.pieces) {
    ProtoWriter piece;
    piece.bytes_field(kPiecePiece, p.piece);
    piece.float_field(kPieceScore, p.score);
    piece.varint_field(kPieceType, static_cast<uint64_t>(p.type));
    model.bytes_field(kModelPieces, piece.bytes());
  }
  ProtoWriter trainer;
  trainer.varint_field(kTrainerModelType, kModelTypeBpe);
  trainer.int32_field(kTrainerVocabSize, static_cast<int32_t>(spec.pieces.size()));
  trainer.bool_field(kTrainerByteFallback, spec.byte_fallback);
  trainer.int32_field(kTrainerUnkId, spec.unk_id);
  // BOS/EOS/PAD are placed by the chat template, never by the encoder.
  trainer.int32_field(kTrainerBosId, -1);
  trainer.int32_field(kTrainerEosId, -1);
  trainer.int32_field(kTrainerPadId, -1);
  model.bytes_field(kModelTrainerSpec, trainer.bytes());
  ProtoWriter normalizer;
  normalizer.bytes_field(kNormalizerName, "identity");
  normalizer.bool_field(kNormalizerAddDummyPrefix, spec.add_dummy_prefix);
  normalizer.bool_field(kNormalizerRemoveExtraWhitespaces, spec.remove_extra_whitespaces);
  normalizer.bool_field(kNormalizerEscapeWhitespaces, spec.escape_whitespaces);
  model.bytes_field(kModelNormalizerSpec, normalizer.bytes());
  return model.bytes();
}

}  // namespace gemma
