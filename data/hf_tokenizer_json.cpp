#include "data/hf_tokenizer_json.h"

#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <type_traits>

#include "io/bounded_json.h"
#include "io/input_error.h"

namespace gemma {
using json = nlohmann::json;

namespace {

bool is_byte_piece(const std::string& p) {
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return false;
  return std::isxdigit(static_cast<unsigned char>(p[3])) &&
         std::isxdigit(static_cast<unsigned char>(p[4]));
}

size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xc0) != 0x80;
  return n;
}

// Reads an optional field of an object without trusting its type: absent (or `obj` not an
// object) gives `fallback`; present with another type gives nullopt for the caller to refuse.
template <typename T>
std::optional<T> field_or(const json& obj, const char* key, T fallback) {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return fallback;
  const json& v = obj[key];
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) return std::nullopt;
  } else {
    if (!v.is_string()) return std::nullopt;
  }
  return v.get<T>();
}

// The largest token id: ids are int32 in the SentencePiece model and in every tensor of ids.
constexpr int64_t kMaxTokenId = std::numeric_limits<int32_t>::max() - 1;

// A token id: an integer from 0 to kMaxTokenId (negative and unsigned-overflowing ones refused).
std::optional<int64_t> token_id(const json& v) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u <= static_cast<uint64_t>(kMaxTokenId)) return static_cast<int64_t>(u);
    return std::nullopt;
  }
  if (v.is_number_integer()) {
    const auto i = v.get<int64_t>();
    if (i >= 0 && i <= kMaxTokenId) return i;
  }
  return std::nullopt;
}

// The normalizer must replace " " with "▁" (directly, or inside a Sequence) and do nothing
// else. Any other shape, including fields of the wrong type, is "not Gemma's".
bool is_gemma_normalizer(const json& n) {
  if (!n.is_object()) return false;
  const auto type = field_or<std::string>(n, "type", "");
  if (type == "Replace") {
    const json pattern = n.contains("pattern") ? n["pattern"] : json::object();
    return field_or<std::string>(pattern, "String", "") == " " &&
           field_or<std::string>(n, "content", "") == "\u2581";
  }
  if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array() &&
      n["normalizers"].size() == 1) {
    return is_gemma_normalizer(n["normalizers"][0]);
  }
  return false;
}

}  // namespace

SentencePieceModelSpec sentencepiece_spec_from_hf_json(const std::string& json_text,
                                                       const std::string& where) {
  json root;
  root = parse_json_input(json_text, where);
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object()) {
    throw InputError(where + ": expected an object with a \"model\" object");
  }
  const json& model = root["model"];
  const auto model_type = field_or<std::string>(model, "type", "");
  if (!model_type) throw InputError(where + ": model.type is not a string");
  if (*model_type != "BPE") {
    throw InputError(where + ": model.type is \"" + error_excerpt(*model_type) +
                     "\", expected \"BPE\" (Gemma's tokenizer)");
  }
  if (!is_gemma_normalizer(root.contains("normalizer") ? root["normalizer"] : json())) {
    throw InputError(where +
                     ": normalizer is not Replace(\" \", \"\u2581\"): not a Gemma tokenizer.json");
  }
  if (!model.contains("vocab") || !model["vocab"].is_object())
    throw InputError(where + ": model.vocab is not an object");

  std::map<int64_t, std::string> by_id;
  std::map<std::string, int64_t> id_of;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    const auto vocab_id = token_id(*it);
    if (!vocab_id) {
      throw InputError(where + ": model.vocab[\"" + error_excerpt(it.key()) +
                       "\"] is not an id from 0 to " + std::to_string(kMaxTokenId));
    }
    const int64_t id = *vocab_id;
    if (!by_id.emplace(id, it.key()).second)
      throw InputError(where + ": id " + std::to_string(id) + " is used twice");
    id_of[it.key()] = id;
  }
  std::map<int64_t, bool> added_special;
  if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
    for (const json& t : root["added_tokens"]) {
      const auto added_id = t.is_object() && t.contains("id") ? token_id(t["id"]) : std::nullopt;
      if (!added_id || !t.contains("content") || !t["content"].is_string()) {
        throw InputError(where + ": added_tokens entries need an id from 0 to " +
                         std::to_string(kMaxTokenId) + " and a string content");
      }
      const int64_t id = *added_id;
      const std::string content = t["content"].get<std::string>();
      const auto known = by_id.find(id);
      if (known == by_id.end()) {
        by_id[id] = content;
        id_of[content] = id;
      } else if (known->second != content) {
        throw InputError(where + ": added token id " + std::to_string(id) + " is \"" +
                         error_excerpt(content) + "\" but the vocab has \"" +
                         error_excerpt(known->second) + "\" there");
      }
      const auto special = field_or<bool>(t, "special", false);
      if (!special) {
        throw InputError(where + ": added token id " + std::to_string(id) +
                         ": \"special\" is not true or false");
      }
      added_special[id] = *special;
    }
  }
  if (by_id.empty()) throw InputError(where + ": empty vocabulary");
  const int64_t n = by_id.rbegin()->first + 1;  // ids are at most kMaxTokenId: no overflow
  if (static_cast<int64_t>(by_id.size()) != n) {
    throw InputError(where + ": ids are not 0.." + std::to_string(n - 1) + " without gaps");
  }

  // Merge ranks: the score of a piece is minus the rank of the first merge that makes it.
  std::map<int64_t, int64_t> rank_of_result;
  if (model.contains("merges")) {
    if (!model["merges"].is_array()) throw InputError(where + ": model.merges is not a list");
    int64_t rank = 0;
    for (const json& m : model["merges"]) {
      std::string left, right;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          throw InputError(where + ": merge " + std::to_string(rank) + " \"" + error_excerpt(s) +
                           "\" is not \"left right\"");
        }
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else {
        throw InputError(where + ": merge " + std::to_string(rank) +
                         " is neither \"a b\" nor [\"a\", \"b\"]");
      }
      const auto result = id_of.find(left + right);
      if (!id_of.count(left) || !id_of.count(right) || result == id_of.end()) {
        throw InputError(where + ": merge " + std::to_string(rank) + " (\"" + error_excerpt(left) +
                         "\", \"" + error_excerpt(right) +
                         "\") uses or makes a piece that is not in the vocabulary");
      }
      rank_of_result.emplace(result->second, rank);  // keeps the first (best) rank
      ++rank;
    }
  }

  SentencePieceModelSpec spec;
  const auto byte_fallback = field_or<bool>(model, "byte_fallback", false);
  if (!byte_fallback) throw InputError(where + ": model.byte_fallback is not true or false");
  spec.byte_fallback = *byte_fallback;
  const auto unk_token = field_or<std::string>(model, "unk_token", "");
  if (!unk_token) throw InputError(where + ": model.unk_token is not a string or null");
  const std::string& unk = *unk_token;
  spec.unk_id = -1;
  spec.pieces.resize(static_cast<size_t>(n));
  for (const auto& [id, piece] : by_id) {
    SentencePiece& p = spec.pieces[static_cast<size_t>(id)];
    p.piece = piece;
    const auto special = added_special.find(id);
    const auto rank = rank_of_result.find(id);
    if (!unk.empty() && piece == unk) {
      p.type = PieceType::kUnknown;
      spec.unk_id = static_cast<int>(id);
    } else if (special != added_special.end()) {
      p.type = special->second ? PieceType::kControl : PieceType::kUserDefined;
    } else if (is_byte_piece(piece)) {
      p.type = PieceType::kByte;
    } else if (rank != rank_of_result.end()) {
      p.score = -static_cast<float>(rank->second);
    } else if (utf8_length(piece) > 1) {
      p.type = PieceType::kUnused;  // no merge reaches it
    }
  }
  if (spec.unk_id < 0)
    throw InputError(where + ": model.unk_token is missing or not in the vocabulary");
  return spec;
}

}  // namespace gemma
