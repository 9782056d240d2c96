// parse_bounded_json and friends: nesting refused before parsing, error excerpts kept short.
#include "io/bounded_json.h"

#include <gtest/gtest.h>

#include <string>

namespace gemma {
namespace {

std::string nested(int depth, const std::string& inner = "1") {
  std::string s;
  for (int i = 0; i < depth; ++i) s += i % 2 ? "{\"k\":" : "[";
  s += inner;
  for (int i = depth - 1; i >= 0; --i) s += i % 2 ? "}" : "]";
  return s;
}

std::string error_of(const std::string& text) {
  try {
    parse_json_input(text, "f.json");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(BoundedJson, AcceptsNestingUpToTheLimit) {
  EXPECT_EQ(parse_bounded_json(nested(kMaxJsonDepth), "x").dump().size(),
            nested(kMaxJsonDepth).size());
}

TEST(BoundedJson, RefusesDeeperNestingBeforeParsing) {
  const std::string e = error_of(nested(kMaxJsonDepth + 1));
  EXPECT_NE(e.find("f.json: JSON nested deeper than 128 levels"), std::string::npos) << e;
  // 100 000 levels: the depth check stops at the limit; nothing recurses.
  const std::string deep(100000, '[');
  const std::string e2 = error_of(deep);
  EXPECT_NE(e2.find("nested deeper than 128 levels (at byte 129)"), std::string::npos) << e2;
}

TEST(BoundedJson, BracketsInsideStringsDoNotCount) {
  const std::string text = "[\"" + std::string(500, '[') + "\\\"" + std::string(500, '{') + "\"]";
  EXPECT_EQ(parse_bounded_json(text, "x")[0].get<std::string>().size(), 1001u);
  size_t offset = 0;
  EXPECT_EQ(json_nesting_depth(text, kMaxJsonDepth, &offset), 1);
}

TEST(BoundedJson, ParseErrorsQuoteAShortExcerpt) {
  const std::string huge_token = "[" + std::string(100000, 'x') + "]";
  const std::string e = error_of(huge_token);
  EXPECT_NE(e.find("f.json: not valid JSON"), std::string::npos) << e;
  EXPECT_LT(e.size(), 300u) << e;
  const std::string unterminated = "[\"" + std::string(100000, 'y');
  const std::string e2 = error_of(unterminated);
  EXPECT_LT(e2.size(), 300u) << e2;
  EXPECT_NE(e2.find("..."), std::string::npos) << e2;
}

TEST(BoundedJson, ExcerptsCutAtCharacterBoundaries) {
  std::string text;
  for (int i = 0; i < 40; ++i) text += "\xC3\xA9";  // é, two bytes each
  const std::string cut = error_excerpt(text, 9);
  EXPECT_EQ(cut, "\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9...");
  EXPECT_EQ(error_excerpt("short", 9), "short");
}

TEST(BoundedJson, ExcerptsStayOnOneLine) {
  EXPECT_EQ(error_excerpt(std::string("a\nb\tc\rd\x01\x7f"
                                      "e\0f",
                                      12)),
            "a\\nb\\tc\\rd\\x01\\x7fe\\x00f");
  // The limit counts the input's bytes, not the escapes'.
  EXPECT_EQ(error_excerpt("\n\n\n\n", 2), "\\n\\n...");
}

}  // namespace
}  // namespace gemma
