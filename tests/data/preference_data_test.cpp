// Preference data: TRL's implicit prompt extraction, the common-prefix split, KTO's unpairing
// (per 1000 pairs) and KL rotation (per micro-batch), the drop of rows whose prompt fills
// max_length, and the refused rows. Expectations are written from TRL's rules by hand; the
// reference test (tests/reference/test_preference_data.py) checks the ids against TRL itself.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "data/dataset_rows.h"
#include "data/jsonl_reader.h"
#include "data/preference_dataset.h"
#include "data/sft_tokenization.h"
#include "io/input_error.h"

namespace gemma {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const Tokenizer& tokenizer() {
  static const Tokenizer tok =
      Tokenizer::from_folder(fs::path(GEMMA_SOURCE_DIR) / "configs" / "tokenizer");
  return tok;
}

class Rows {
 public:
  explicit Rows(const std::vector<json>& rows) {
    static int counter = 0;
    dir_ = fs::temp_directory_path() /
           ("preference_data_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
    path_ = dir_ / "rows.jsonl";
    std::ofstream out(path_);
    for (const json& r : rows) out << r.dump() << "\n";
  }
  ~Rows() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  Rows(const Rows&) = delete;
  Rows& operator=(const Rows&) = delete;
  std::vector<fs::path> files() const { return {path_}; }
  std::string name() const { return path_.string(); }

 private:
  fs::path dir_, path_;
};

DatasetRow pair(const json& row) { return parse_dataset_row(row, DatasetKind::kPreference, "t:1"); }

std::vector<int32_t> encode(const std::string& text) {
  const std::vector<int> ids = encode_text_with_bos(tokenizer(), text);
  return {ids.begin(), ids.end()};
}

std::vector<int32_t> tail(const std::vector<int32_t>& ids, size_t from) {
  return {ids.begin() + static_cast<std::ptrdiff_t>(from), ids.end()};
}

TEST(ImplicitPrompt, StringsSplitAtTheCommonStartWithTheSpaceOnTheCompletions) {
  const DatasetRow r = pair({{"chosen", "Answer: yes"}, {"rejected", "Answer: no"}});
  EXPECT_EQ(r.prompt.text, "Answer:");
  EXPECT_EQ(r.chosen.text, " yes");
  EXPECT_EQ(r.rejected.text, " no");
  // Characters, not bytes: ö (C3 B6) and è (C3 A8) share their first byte.
  const DatasetRow u = pair({{"chosen", "Héllo wörld"}, {"rejected", "Héllo wèrld"}});
  EXPECT_EQ(u.prompt.text, "Héllo w");
  EXPECT_EQ(u.chosen.text, "örld");
  EXPECT_EQ(u.rejected.text, "èrld");
  // One a prefix of the other: Python's loop ends on the shorter one's last character.
  const DatasetRow p = pair({{"chosen", "same start, longer"}, {"rejected", "same start"}});
  EXPECT_EQ(p.prompt.text, "same star");
  EXPECT_EQ(p.chosen.text, "t, longer");
  EXPECT_EQ(p.rejected.text, "t");
  // Nothing shared: an empty prompt.
  const DatasetRow n = pair({{"chosen", "yes"}, {"rejected", "no"}});
  EXPECT_EQ(n.prompt.text, "");
  EXPECT_EQ(n.chosen.text, "yes");
}

TEST(ImplicitPrompt, ConversationsSplitAtTheFirstDifferentMessage) {
  const json user = {{"role", "user"}, {"content", "2+2?"}};
  const DatasetRow r = pair({{"chosen", {user, {{"role", "assistant"}, {"content", "4"}}}},
                             {"rejected", {user, {{"role", "assistant"}, {"content", "5"}}}}});
  ASSERT_TRUE(r.conversational);
  ASSERT_EQ(r.prompt.messages.size(), 1u);
  EXPECT_EQ(r.prompt.messages[0].role, "user");
  ASSERT_EQ(r.chosen.messages.size(), 1u);
  EXPECT_EQ(r.chosen.messages[0].content, "4");
  EXPECT_EQ(r.rejected.messages[0].content, "5");
  try {
    pair({{"chosen", {{{"role", "user"}, {"content", "a"}}}},
          {"rejected", {{{"role", "user"}, {"content", "b"}}}}});
    FAIL() << "no shared message accepted";
  } catch (const RowError& e) {
    EXPECT_NE(std::string(e.what()).find("do not start with the same messages"), std::string::npos)
        << e.what();
  }
}

TEST(PreferenceTokens, TheCompletionStartsWhereBothSequencesLeaveThePrompt) {
  SftDataOptions o;
  const PreferenceExample e = tokenize_preference_row(
      pair({{"prompt", "Hel"}, {"chosen", "lo world"}, {"rejected", "p me"}}), tokenizer(), o,
      "t:1");
  const std::vector<int32_t> prompt = encode("Hel");
  const std::vector<int32_t> chosen = encode("Hello world<eos>");
  const std::vector<int32_t> rejected = encode("Help me<eos>");
  size_t shared = 0;
  while (shared < prompt.size() && prompt[shared] == chosen[shared] &&
         prompt[shared] == rejected[shared])
    ++shared;
  ASSERT_LT(shared, prompt.size());  // "Hel" + "lo" merge: the case is exercised
  EXPECT_EQ(e.prompt_ids, std::vector<int32_t>(prompt.begin(), prompt.begin() + shared));
  EXPECT_EQ(e.chosen_ids, tail(chosen, shared));
  EXPECT_EQ(e.rejected_ids, tail(rejected, shared));
  EXPECT_EQ(e.prompt_tokens_left_out, prompt.size() - shared);
  // eos is appended once, not to a completion that already ends with it.
  const PreferenceExample f = tokenize_preference_row(
      pair({{"prompt", "Q:"}, {"chosen", " 4<eos>"}, {"rejected", " 5"}}), tokenizer(), o, "t:1");
  EXPECT_EQ(f.chosen_ids.back(), tokenizer().require_special("<eos>"));
  EXPECT_NE(f.chosen_ids[f.chosen_ids.size() - 2], tokenizer().require_special("<eos>"));
  EXPECT_EQ(f.rejected_ids.back(), tokenizer().require_special("<eos>"));
}

TEST(PreferenceTokens, IdenticalPairsAndEmptyCompletionsAreRefused) {
  SftDataOptions o;
  const auto problem = [&](const json& row) {
    try {
      tokenize_preference_row(pair(row), tokenizer(), o, "t:1");
    } catch (const RowError& e) {
      return std::string(row_problem_name(e.problem()));
    }
    return std::string("accepted");
  };
  EXPECT_EQ(problem({{"prompt", "a"}, {"chosen", " b"}, {"rejected", " b"}}),
            "chosen equals rejected");
  EXPECT_EQ(problem({{"prompt", "a"}, {"chosen", " b<eos>"}, {"rejected", " b"}}),
            "chosen equals rejected");  // the same once eos is appended
  EXPECT_EQ(problem({{"prompt", "a"}, {"chosen", ""}, {"rejected", " b"}}), "empty completion");
  EXPECT_EQ(problem({{"prompt", "a"}, {"chosen", " b"}, {"rejected", " c"}}), "accepted");
}

TEST(PreferenceDataset, RowsWhosePromptFillsMaxLengthAreDroppedUnderKeepStart) {
  const std::string long_prompt(400, 'x');
  const Rows rows({{{"prompt", "a"}, {"chosen", " b"}, {"rejected", " c"}},
                   {{"prompt", long_prompt}, {"chosen", " b"}, {"rejected", " c"}}});
  SftDataOptions o;
  o.max_length = 8;
  PreferenceDataReport report;
  EXPECT_EQ(read_preference_examples(rows.files(), tokenizer(), o, &report).size(), 1u);
  EXPECT_EQ(report.dropped_long_prompt, 1);
  o.truncation = SftTruncation::kKeepEnd;  // TRL filters under keep_start only
  EXPECT_EQ(read_preference_examples(rows.files(), tokenizer(), o, &report).size(), 2u);
  const Rows only_long(
      std::vector<json>{{{"prompt", long_prompt}, {"chosen", " b"}, {"rejected", " c"}}});
  o.truncation = SftTruncation::kKeepStart;
  try {
    read_preference_examples(only_long.files(), tokenizer(), o);
    FAIL() << "an empty training set accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("no example left"), std::string::npos) << e.what();
  }
}

TEST(PreferenceDataset, OtherShapesAndBadRowsNameTheLine) {
  const Rows sft(std::vector<json>{{{"text", "hello"}}});
  try {
    read_preference_examples(sft.files(), tokenizer(), {});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), sft.name() +
                                         ":1: DPO takes preference rows (prompt, chosen, "
                                         "rejected); this file has text rows");
  }
  const Rows missing({{{"prompt", "a"}, {"chosen", " b"}, {"rejected", " c"}},
                      {{"prompt", "a"}, {"chosen", " b"}}});
  try {
    read_preference_examples(missing.files(), tokenizer(), {});
    FAIL();
  } catch (const RowError& e) {
    EXPECT_NE(std::string(e.what()).find(missing.name() + ":2: no \"rejected\" column"),
              std::string::npos)
        << e.what();
  }
  SftDataOptions skip;
  skip.skip_invalid = true;
  PreferenceDataReport report;
  EXPECT_EQ(read_preference_examples(missing.files(), tokenizer(), skip, &report).size(), 1u);
  EXPECT_EQ(report.skipped_invalid, 1);
}

TEST(KtoDataset, PairsAreUnpairedPerThousandChosenFirst) {
  std::vector<DatasetRow> pairs;
  pairs.reserve(1003);
  for (int i = 0; i < 1003; ++i) {
    pairs.push_back(pair({{"prompt", "p" + std::to_string(i)},
                          {"chosen", " c" + std::to_string(i)},
                          {"rejected", " r" + std::to_string(i)}}));
  }
  const std::vector<DatasetRow> rows = unpair_preference_rows(pairs);
  ASSERT_EQ(rows.size(), 2006u);
  EXPECT_EQ(rows[0].completion.text, " c0");
  EXPECT_TRUE(rows[0].label);
  EXPECT_EQ(rows[999].completion.text, " c999");
  EXPECT_EQ(rows[1000].completion.text, " r0");
  EXPECT_FALSE(rows[1000].label);
  EXPECT_EQ(rows[1999].prompt.text, "p999");
  EXPECT_EQ(rows[2000].completion.text, " c1000");
  EXPECT_EQ(rows[2003].completion.text, " r1000");
  EXPECT_EQ(rows[2005].completion.text, " r1002");
  for (const DatasetRow& r : rows) EXPECT_EQ(r.kind, DatasetKind::kKto);
}

TEST(KtoDataset, KlCompletionsRotateWithinEachMicroBatch) {
  std::vector<json> rows;
  rows.reserve(5);
  for (int i = 0; i < 5; ++i) {
    rows.push_back(
        {{"prompt", "q"}, {"completion", " a" + std::to_string(i)}, {"label", i % 2 == 0}});
  }
  const Rows file(rows);
  PreferenceDataReport report;
  const std::vector<KtoExample> e = read_kto_examples(file.files(), tokenizer(), {}, 2, &report);
  ASSERT_EQ(e.size(), 5u);
  EXPECT_EQ(e[0].kl_completion_ids, e[1].completion_ids);  // (x1, y2), (x2, y1) | (x3, y4) ...
  EXPECT_EQ(e[1].kl_completion_ids, e[0].completion_ids);
  EXPECT_EQ(e[2].kl_completion_ids, e[3].completion_ids);
  EXPECT_EQ(e[3].kl_completion_ids, e[2].completion_ids);
  EXPECT_EQ(e[4].kl_completion_ids, e[4].completion_ids);  // a group of one pairs with itself
  EXPECT_EQ(report.desirable, 3);
  EXPECT_EQ(report.undesirable, 2);
  const std::vector<KtoExample> three = read_kto_examples(file.files(), tokenizer(), {}, 3);
  EXPECT_EQ(three[0].kl_completion_ids, three[2].completion_ids);
  EXPECT_EQ(three[1].kl_completion_ids, three[0].completion_ids);
  EXPECT_EQ(three[2].kl_completion_ids, three[1].completion_ids);
  EXPECT_TRUE(read_kto_examples(file.files(), tokenizer(), {}, 0)[0].kl_completion_ids.empty());
}

TEST(KtoDataset, LabelsMustBeBooleans) {
  const Rows file(std::vector<json>{{{"prompt", "q"}, {"completion", " a"}, {"label", 1}}});
  try {
    read_kto_examples(file.files(), tokenizer(), {}, 2);
    FAIL();
  } catch (const RowError& e) {
    EXPECT_EQ(std::string(e.what()),
              file.name() + ":1: \"label\" must be true or false (found a number)");
  }
}

}  // namespace
}  // namespace gemma
