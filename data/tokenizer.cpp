#include "data/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "data/hf_tokenizer_json.h"
#include "io/input_error.h"

namespace gemma {
namespace fs = std::filesystem;

namespace {

std::shared_ptr<sentencepiece::SentencePieceProcessor> load_proto(const std::string& bytes,
                                                                  const std::string& where) {
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->LoadFromSerializedProto(bytes);
  if (!status.ok())
    throw InputError(where + ": not a valid SentencePiece model: " + status.ToString());
  return sp;
}

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<sentencepiece::SentencePieceProcessor> sp, std::string source)
    : sp_(std::move(sp)), source_(std::move(source)) {
  for (int id = 0; id < sp_->GetPieceSize(); ++id)
    max_piece_bytes_ = std::max(max_piece_bytes_, sp_->IdToPiece(id).size());
}

Tokenizer Tokenizer::from_folder(const fs::path& dir) {
  if (fs::exists(dir / "tokenizer.json")) return from_hf_json(dir / "tokenizer.json");
  if (fs::exists(dir / "tokenizer.model")) return from_sentencepiece_model(dir / "tokenizer.model");
  throw InputError(dir.string() + ": no tokenizer.json or tokenizer.model");
}

Tokenizer Tokenizer::from_hf_json(const fs::path& path) {
  const SentencePieceModelSpec spec =
      sentencepiece_spec_from_hf_json(read_text_file(path), path.string());
  return Tokenizer(load_proto(serialize_sentencepiece_model(spec), path.string()), path.string());
}

Tokenizer Tokenizer::from_sentencepiece_model(const fs::path& path) {
  return Tokenizer(load_proto(read_text_file(path), path.string()), path.string());
}

std::vector<int> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  if (!status.ok()) throw InputError(source_ + ": cannot encode text: " + status.ToString());
  return ids;
}

std::vector<TokenSpan> Tokenizer::encode_with_offsets(const std::string& text) const {
  const sentencepiece::ImmutableSentencePieceText spt = sp_->EncodeAsImmutableProto(text);
  std::vector<TokenSpan> out;
  for (const auto& p : spt.pieces()) out.push_back({static_cast<int>(p.id()), p.begin(), p.end()});
  return out;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  for (int id : ids) {
    if (id < 0 || id >= vocab_size()) {
      throw InputError(source_ + ": token id " + std::to_string(id) + " is outside the vocabulary");
    }
  }
  std::string text;
  const auto status = sp_->Decode(ids, &text);
  if (!status.ok()) throw InputError(source_ + ": cannot decode: " + status.ToString());
  return text;
}

int Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }
std::string Tokenizer::piece(int id) const { return sp_->IdToPiece(id); }
bool Tokenizer::is_control(int id) const { return sp_->IsControl(id); }

std::optional<int> Tokenizer::special_id(const std::string& token) const {
  const int id = sp_->PieceToId(token);
  if (id < 0 || id >= vocab_size() || sp_->IdToPiece(id) != token) return std::nullopt;
  return id;
}

int Tokenizer::require_special(const std::string& token) const {
  if (const auto id = special_id(token)) return *id;
  throw InputError(source_ + ": the vocabulary has no \"" + token +
                   "\" token (not a Gemma 4 tokenizer?)");
}

}  // namespace gemma
