// Tokenizer: Gemma 4 text <-> token ids through libsentencepiece, from a model folder's
// `tokenizer.json` (what Gemma 4 ships; converted to a SentencePiece BPE model in memory) or
// `tokenizer.model`. encode() treats its input as plain text: control tokens such as `<turn|>`
// never come out of it; only the chat template places them, by their strings (special_id()).
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace gemma {

// One token of encode_with_offsets(): its id and the bytes [begin, end) of the input it covers.
struct TokenSpan {
  int id;
  size_t begin;
  size_t end;
};

class Tokenizer {
 public:
  // `tokenizer.json` if the folder has one, else `tokenizer.model`; InputError otherwise.
  static Tokenizer from_folder(const std::filesystem::path& dir);
  static Tokenizer from_hf_json(const std::filesystem::path& path);
  static Tokenizer from_sentencepiece_model(const std::filesystem::path& path);

  std::vector<int> encode(const std::string& text) const;
  std::vector<TokenSpan> encode_with_offsets(const std::string& text) const;
  // Control tokens decode to nothing; byte pieces are reassembled into UTF-8.
  std::string decode(const std::vector<int>& ids) const;

  int vocab_size() const;
  // The longest piece of the vocabulary, in bytes: no token covers more of an input, so a text of
  // n bytes is at least n / max_piece_bytes() tokens (a bound checked before tokenizing a huge
  // input against a context).
  size_t max_piece_bytes() const { return max_piece_bytes_; }
  std::string piece(int id) const;
  bool is_control(int id) const;
  // The id of a special token by its string, if this vocabulary has it.
  std::optional<int> special_id(const std::string& token) const;
  // Same, or an InputError naming the token and the tokenizer file.
  int require_special(const std::string& token) const;
  const std::string& source() const { return source_; }

 private:
  Tokenizer(std::shared_ptr<sentencepiece::SentencePieceProcessor> sp, std::string source);
  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string source_;
  size_t max_piece_bytes_ = 1;
};

}  // namespace gemma
