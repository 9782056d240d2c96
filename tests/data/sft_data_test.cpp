// The SFT data pipeline: JSONL reading and its errors, TRL's shapes, tokenization and masks,
// truncation, bfd and wrapped packing (against a plain reference written here), validate-data's
// checks. The bundled tokenizer (configs/tokenizer) does the encoding.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>

#include "data/dataset_rows.h"
#include "data/dataset_validation.h"
#include "data/jsonl_reader.h"
#include "data/sft_dataset.h"
#include "data/sft_tokenization.h"
#include "io/input_error.h"

namespace gemma {
namespace {

namespace fs = std::filesystem;

const Tokenizer& tokenizer() {
  static const Tokenizer tok =
      Tokenizer::from_folder(fs::path(GEMMA_SOURCE_DIR) / "configs" / "tokenizer");
  return tok;
}

// A JSONL file with `text` as its content, removed at the end of the test.
class TempFile {
 public:
  explicit TempFile(const std::string& text, const std::string& name = "rows.jsonl") {
    static int counter = 0;
    dir_ = fs::temp_directory_path() /
           ("sft_data_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
    path_ = dir_ / name;
    std::ofstream(path_, std::ios::binary) << text;
  }
  ~TempFile() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const fs::path& path() const { return path_; }
  std::string name() const { return path_.string(); }

 private:
  fs::path dir_, path_;
};

std::vector<SftExample> read(const TempFile& file, const SftDataOptions& options = {},
                             SftDataReport* report = nullptr) {
  return read_sft_examples({file.path()}, tokenizer(), options, report);
}

// The InputError message of reading `jsonl`, or "" when it reads.
std::string error_of(const std::string& jsonl, const SftDataOptions& options, std::string* file) {
  const TempFile f(jsonl);
  *file = f.name();
  try {
    read(f, options);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

void expect_error(const std::string& jsonl, const std::string& at, const std::string& what,
                  const SftDataOptions& options = {}) {
  std::string file;
  const std::string message = error_of(jsonl, options, &file);
  EXPECT_NE(message.find(file + at), std::string::npos) << message;
  EXPECT_NE(message.find(what), std::string::npos) << message;
}

std::vector<int> ids(const std::string& text) { return tokenizer().encode(text); }
int bos() { return tokenizer().require_special("<bos>"); }
int eos() { return tokenizer().require_special("<eos>"); }

std::vector<int32_t> concat(std::initializer_list<std::vector<int>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// --- reading and its errors -----------------------------------------------------------------

TEST(SftRows, InvalidJsonNamesFileLineAndColumn) {
  expect_error("{\"text\": \"a\"}\n{\"text\": tru}\n", ":2:", "invalid JSON at column");
  expect_error("{\"text\": 1e999}\n", ":1:", "invalid JSON");  // out of range, found by the fuzzer
}

TEST(SftRows, MissingAndMistypedFields) {
  expect_error("{\"text\": \"a\"}\n{\"txt\": \"b\"}\n", ":2:", "no \"text\" column");
  expect_error("{\"text\": 5}\n", ":1:", "\"text\" must be a string (found a number)");
  expect_error(
      "{\"prompt\": \"a\", \"completion\": [{\"role\": \"assistant\", \"content\": \"b\"}]}\n",
      ":1:", "\"completion\" must be a string like \"prompt\"");
  expect_error("{\"messages\": \"hi\"}\n", ":1:", "\"messages\" must be a non-empty list");
  expect_error("{\"messages\": []}\n", ":1:", "found an empty list");
  expect_error("[1, 2]\n", ":1:", "expected a JSON object (one row), found a list");
  expect_error("{\"foo\": 1}\n", ":1:", "found columns foo");
  expect_error(
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "tools": 3})"
      "\n",
      ":1:", "\"tools\" must be a list");
  expect_error(
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "chat_template_kwargs": {"thinking": true}})"
      "\n",
      ":1:", "unknown key \"thinking\"");
}

TEST(SftRows, UnknownRoleTurnOrderAndEmptyModelTurn) {
  expect_error(R"({"messages": [{"role": "robot", "content": "a"}]})"
               "\n",
               ":1:", "unknown role \"robot\"");
  expect_error(
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}]})"
      "\n",
      ":1:", "a system message must come first");
  expect_error(
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "r"}]})"
      "\n",
      ":1:", "a tool message must follow");
  expect_error(
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]})"
      "\n",
      ":1:", "messages[1]: an empty model turn");
  // Turn order holds across prompt + completion: a system turn in the completion is misplaced.
  expect_error(
      R"({"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "system", "content": "s"}]})"
      "\n",
      ":1:", "must come first");
}

TEST(SftRows, RowProblemsAreClassified) {
  const auto problem = [](const char* row) {
    try {
      const nlohmann::json j = nlohmann::json::parse(row);
      parse_dataset_row(j, detect_dataset_kind(j, "f:1"), "f:1");
    } catch (const RowError& e) {
      return e.problem();
    }
    return RowProblem::kLineTooLong;  // not thrown
  };
  EXPECT_EQ(problem(R"({"messages": [{"role": "x", "content": "a"}]})"), RowProblem::kUnknownRole);
  EXPECT_EQ(problem(R"({"messages": [{"content": "a"}]})"), RowProblem::kMissingField);
  EXPECT_EQ(
      problem(
          R"({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]})"),
      RowProblem::kTurnOrder);
  EXPECT_EQ(problem(R"({"messages": [{"role": "assistant", "content": null}]})"),
            RowProblem::kEmptyModelTurn);
  EXPECT_EQ(problem(R"({"prompt": "a"})"), RowProblem::kUnknownColumns);
  EXPECT_EQ(problem(R"({"prompt": "a", "completion": 1})"), RowProblem::kMistypedField);
  // A prompt beside a conversation: TRL reads the prompt and then fails on the missing completion;
  // here it is refused by name, with or without a completion.
  EXPECT_EQ(problem(R"({"prompt": "a", "messages": [{"role": "user", "content": "a"}]})"),
            RowProblem::kAmbiguousColumns);
  EXPECT_EQ(problem(R"({"prompt": "a", "completion": "b", "conversations": []})"),
            RowProblem::kAmbiguousColumns);
  EXPECT_EQ(problem(R"({"messages": [{"role": "user", "content": [{"type": "txt"}]}]})"),
            RowProblem::kMistypedField);
}

TEST(SftRows, DeepNestingIsAnInvalidJsonRow) {
  std::string deep = "{\"text\": \"a\", \"extra\": " + std::string(50000, '[');
  try {
    parse_json_row(deep, "f:7");
    FAIL() << "accepted";
  } catch (const RowError& e) {
    EXPECT_EQ(e.problem(), RowProblem::kInvalidJson);
    EXPECT_NE(std::string(e.what()).find("f:7: JSON nested deeper than 128 levels"),
              std::string::npos)
        << e.what();
  }
  try {  // a parse error quotes a short excerpt, not the line
    parse_json_row("{\"text\": " + std::string(100000, 'q') + "}", "f:8");
    FAIL() << "accepted";
  } catch (const RowError& e) {
    EXPECT_LT(std::string(e.what()).size(), 300U) << e.what();
  }
}

TEST(SftRows, BlankLinesCrlfAndUtf8) {
  const TempFile f(
      "\n{\"text\": \"a\"}\r\n   \n\r\n{\"text\": \"caf\xc3\xa9\"}");  // no final newline
  SftDataReport report;
  const auto examples = read(f, {}, &report);
  ASSERT_EQ(examples.size(), 2U);
  EXPECT_EQ(report.rows, 2);
  EXPECT_EQ(examples[0].origin, f.name() + ":2");
  EXPECT_EQ(examples[1].origin, f.name() + ":5");
  expect_error("{\"text\": \"a\xff\"}\n", ":1:", "not valid UTF-8 at byte 12");
  expect_error("{\"text\": \"\xc0\xaf\"}\n", ":1:", "not valid UTF-8");      // overlong
  expect_error("{\"text\": \"\xed\xa0\x80\"}\n", ":1:", "not valid UTF-8");  // surrogate
  EXPECT_EQ(find_invalid_utf8("\xf0\x9f\x98\x80 ok"), std::string::npos);
}

TEST(SftRows, LongLinesAreErrorsAndReadingGoesOn) {
  const std::string long_text(300000, 'x');  // longer than the reader's 64 KiB buffer
  const TempFile f("{\"text\": \"a\"}\n{\"text\": \"" + long_text + "\"}\n{\"text\": \"b\"}\n");
  JsonlReader small(f.path(), 100000);
  JsonlRow row;
  ASSERT_TRUE(small.next(&row));
  try {
    small.next(&row);
    FAIL() << "a 300 kB line passed a 100 kB limit";
  } catch (const RowError& e) {
    EXPECT_EQ(e.problem(), RowProblem::kLineTooLong);
    EXPECT_NE(std::string(e.what()).find(f.name() + ":2: line longer than"), std::string::npos);
  }
  ASSERT_TRUE(small.next(&row));
  EXPECT_EQ(row.line, 3);
  EXPECT_EQ(row.value["text"], "b");
  EXPECT_FALSE(small.next(&row));
  // Under the default limit the same line is one row.
  JsonlReader big(f.path());
  int n = 0;
  while (big.next(&row)) ++n;
  EXPECT_EQ(n, 3);
}

TEST(SftRows, ForEachJsonlRowCountsRowsAndRoutesRowErrors) {
  const TempFile a("{\"n\": 1}\n\n{bad\n{\"n\": 2}\n");
  const TempFile b("{\"n\": 3}");
  const std::vector<fs::path> files = {a.path(), b.path()};
  std::vector<std::string> seen;
  std::vector<RowProblem> problems;
  const auto on_row = [&](const JsonlRow& row) {
    seen.push_back(row.where);
    if (row.value["n"] == 2) throw RowError(RowProblem::kMistypedField, row.where + ": two");
  };
  const int64_t rows = for_each_jsonl_row(
      files, on_row, [&](const RowError& e) { problems.push_back(e.problem()); });
  EXPECT_EQ(rows, 4);  // the bad JSON line counts, the blank one does not
  EXPECT_EQ(seen, (std::vector<std::string>{a.name() + ":1", a.name() + ":4", b.name() + ":1"}));
  EXPECT_EQ(problems,
            (std::vector<RowProblem>{RowProblem::kInvalidJson, RowProblem::kMistypedField}));
  // `throw;` in on_error rethrows the RowError itself; other errors never reach on_error.
  try {
    for_each_jsonl_row(files, on_row, [](const RowError&) { throw; });
    FAIL() << "the bad JSON line was not rethrown";
  } catch (const RowError& e) {
    EXPECT_EQ(e.problem(), RowProblem::kInvalidJson);
    EXPECT_NE(std::string(e.what()).find(a.name() + ":3: invalid JSON"), std::string::npos);
  }
  int errors = 0;
  const auto count_errors = [&](const RowError&) { ++errors; };
  EXPECT_THROW(
      for_each_jsonl_row(
          files, [](const JsonlRow&) { throw InputError("not a row's fault"); }, count_errors),
      InputError);
  EXPECT_THROW(for_each_jsonl_row(
                   {a.path(), a.path().parent_path() / "missing.jsonl"}, [](const JsonlRow&) {},
                   count_errors),
               InputError);
  EXPECT_EQ(errors, 1);  // only the last call reached the bad JSON line (before the missing file)
}

TEST(SftRows, SkipInvalidCountsAndSkips) {
  SftDataOptions o;
  o.skip_invalid = true;
  const TempFile f(
      "{\"text\": \"a\"}\n{bad\n{\"text\": 1}\n{\"text\": \"\xff\"}\n{\"text\": \"b\"}\n");
  SftDataReport report;
  const auto examples = read(f, o, &report);
  EXPECT_EQ(examples.size(), 2U);
  EXPECT_EQ(report.rows, 5);
  EXPECT_EQ(report.skipped_invalid, 3);
  EXPECT_EQ(examples[1].origin, f.name() + ":5");
}

TEST(SftRows, EmptyAndAllInvalidDatasets) {
  expect_error("\n  \n", "", "no rows (empty dataset)");
  SftDataOptions skip;
  skip.skip_invalid = true;
  expect_error("{bad\n{\"text\": 2}\n", "", "no valid rows (all 2 rows are bad", skip);
  expect_error("{bad\n", ":1:", "invalid JSON");  // without skip_invalid the first bad row stops it
}

TEST(SftRows, PreferenceAndKtoRowsAreNotSft) {
  expect_error(
      R"({"prompt": "p", "chosen": "a", "rejected": "b"})"
      "\n",
      ":1:", "SFT takes text, messages or prompt/completion rows; this file has preference");
  expect_error(R"({"prompt": "p", "completion": "a", "label": true})"
               "\n",
               ":1:", "this file has kto rows");
}

TEST(SftRows, PreferenceAndKtoShapesAreTyped) {
  const auto row = [](const char* text) {
    const nlohmann::json j = nlohmann::json::parse(text);
    return parse_dataset_row(j, detect_dataset_kind(j, "f:1"), "f:1");
  };
  const DatasetRow implicit =
      row(R"({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                      "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]})");
  EXPECT_EQ(implicit.kind, DatasetKind::kPreference);
  EXPECT_TRUE(implicit.conversational);
  // TRL's extract_prompt: the shared user turn becomes the prompt.
  EXPECT_EQ(implicit.prompt.messages.size(), 1U);
  EXPECT_EQ(implicit.chosen.messages.size(), 1U);
  EXPECT_EQ(implicit.rejected.messages[0].content, "b");
  const DatasetRow kto = row(R"({"prompt": "p", "completion": "c", "label": false})");
  EXPECT_EQ(kto.kind, DatasetKind::kKto);
  EXPECT_FALSE(kto.label);
  EXPECT_THROW(row(R"({"prompt": "p", "completion": "c", "label": "yes"})"), RowError);
  EXPECT_THROW(
      row(R"({"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]})"),
      RowError);
}

// --- tokenization and masks -----------------------------------------------------------------

TEST(SftTokenize, TextGetsBosAndEosOnce) {
  const TempFile f(
      "{\"text\": \"Hello world\"}\n{\"text\": \"Hi<eos>\"}\n{\"text\": \"<bos>Yo\"}\n");
  const auto e = read(f);
  EXPECT_EQ(e[0].input_ids, concat({{bos()}, ids("Hello world"), {eos()}}));
  EXPECT_EQ(e[1].input_ids, concat({{bos()}, ids("Hi"), {eos()}}));
  EXPECT_EQ(e[2].input_ids, concat({{bos()}, ids("Yo"), {eos()}}));  // never two <bos>
  EXPECT_EQ(e[0].labels_mask, std::vector<uint8_t>(e[0].input_ids.size(), 1));
  EXPECT_EQ(e[0].seq_lengths, std::vector<int32_t>{static_cast<int32_t>(e[0].input_ids.size())});
}

TEST(SftTokenize, ControlTokensWrittenInTextAreTokens) {
  const std::vector<int> got = encode_text_with_bos(tokenizer(), "a<|turn>b<notatoken>c<turn|>");
  const std::vector<int32_t> want = concat({{bos()},
                                            ids("a"),
                                            {tokenizer().require_special("<|turn>")},
                                            ids("b<notatoken>c"),
                                            {tokenizer().require_special("<turn|>")}});
  EXPECT_EQ(std::vector<int32_t>(got.begin(), got.end()), want);
}

TEST(SftTokenize, EosTokenComesFromTheOptions) {
  SftDataOptions o;
  o.eos_token = "<turn|>";
  const TempFile f("{\"text\": \"Hi\"}\n");
  EXPECT_EQ(read(f, o)[0].input_ids.back(), tokenizer().require_special("<turn|>"));
}

// The mask TRL builds: 0 on the tokens the prompt alone and the whole share, 1 after.
std::vector<uint8_t> prefix_mask(const std::vector<int32_t>& prompt,
                                 const std::vector<int32_t>& full) {
  std::vector<uint8_t> mask(full.size(), 1);
  for (size_t t = 0; t < full.size() && t < prompt.size() && prompt[t] == full[t]; ++t) mask[t] = 0;
  return mask;
}

TEST(SftTokenize, PlainCompletionMasksTheCommonPrefix) {
  const TempFile f(
      "{\"prompt\": \"Hello\", \"completion\": \" world\"}\n"
      "{\"prompt\": \"Hel\", \"completion\": \"lo world\"}\n");  // merges across the boundary
  const auto e = read(f);
  const auto full = concat({{bos()}, ids("Hello world"), {eos()}});
  EXPECT_EQ(e[0].input_ids, full);
  EXPECT_EQ(e[0].labels_mask, prefix_mask(concat({{bos()}, ids("Hello")}), full));
  EXPECT_EQ(e[1].input_ids, full);
  const auto hel = concat({{bos()}, ids("Hel")});
  EXPECT_EQ(e[1].labels_mask, prefix_mask(hel, full));
  EXPECT_LT(std::count(e[1].labels_mask.begin(), e[1].labels_mask.end(), 0),
            static_cast<std::ptrdiff_t>(hel.size()))
      << "the boundary merge case should split inside the prompt's tokens";
  // completion_only_loss=false trains on everything.
  SftDataOptions all;
  all.completion_only_loss = false;
  EXPECT_EQ(read(f, all)[0].labels_mask, std::vector<uint8_t>(full.size(), 1));
}

const char* kChatRow =
    R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                     {"role": "assistant", "content": "Bye!"}]})";

std::string chat_line() { return nlohmann::json::parse(kChatRow).dump(); }  // one JSONL line

TEST(SftTokenize, ChatTrainsOnEverythingUnlessAssistantOnly) {
  const TempFile f(chat_line() + "\n");
  const auto plain = read(f)[0];
  const std::vector<ChatMessage> msgs =
      parse_chat_messages(nlohmann::json::parse(kChatRow)["messages"], "t");
  const ChatTokens t = tokenize_chat(render_chat(msgs, {}), tokenizer());
  EXPECT_EQ(plain.input_ids, std::vector<int32_t>(t.ids.begin(), t.ids.end()));
  EXPECT_EQ(plain.labels_mask, std::vector<uint8_t>(t.ids.size(), 1));

  SftDataOptions o;
  o.assistant_only_loss = true;
  const auto masked = read(f, o)[0];
  EXPECT_EQ(masked.labels_mask, t.trainable);
  // The independent expectation: exactly "Hello!<turn|>\n" and "Bye!<turn|>\n" are trained.
  std::vector<int> trained;
  for (size_t i = 0; i < t.ids.size(); ++i) {
    if (masked.labels_mask[i]) trained.push_back(t.ids[i]);
  }
  const int end = tokenizer().require_special("<turn|>");
  std::vector<int> want;
  for (const char* text : {"Hello!", "Bye!"}) {
    const auto a = ids(text);
    want.insert(want.end(), a.begin(), a.end());
    want.push_back(end);
    const auto nl = ids("\n");
    want.insert(want.end(), nl.begin(), nl.end());
  }
  EXPECT_EQ(trained, want);
}

TEST(SftTokenize, AssistantOnlyLossNeedsAssistantTokens) {
  SftDataOptions o;
  o.assistant_only_loss = true;
  expect_error(R"({"messages": [{"role": "user", "content": "a"}]})"
               "\n",
               ":1:", "no assistant tokens to train on", o);
  expect_error("{\"text\": \"a\"}\n", ":1:", "assistant_only_loss applies to conversational rows",
               o);
}

TEST(SftTokenize, ConversationalCompletionMasksPromptAndAndsMasks) {
  const char* row =
      R"({"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]})";
  const TempFile f(std::string(row) + "\n");
  const auto e = read(f)[0];
  const nlohmann::json j = nlohmann::json::parse(row);
  ChatOptions gen;
  gen.add_generation_prompt = true;
  const ChatTokens prompt =
      tokenize_chat(render_chat(parse_chat_messages(j["prompt"], "t"), gen), tokenizer());
  nlohmann::json all = j["prompt"];
  all.push_back(j["completion"][0]);
  const ChatTokens full =
      tokenize_chat(render_chat(parse_chat_messages(all, "t"), {}), tokenizer());
  const std::vector<int32_t> full_ids(full.ids.begin(), full.ids.end());
  EXPECT_EQ(e.input_ids, full_ids);
  EXPECT_EQ(e.labels_mask,
            prefix_mask(std::vector<int32_t>(prompt.ids.begin(), prompt.ids.end()), full_ids));
  SftDataOptions o;
  o.assistant_only_loss = true;
  const auto both = read(f, o)[0];
  for (size_t t = 0; t < both.labels_mask.size(); ++t)
    EXPECT_EQ(both.labels_mask[t], e.labels_mask[t] & full.trainable[t]) << t;
}

// --- truncation -----------------------------------------------------------------------------

TEST(SftTruncate, KeepStartAndKeepEnd) {
  const TempFile f("{\"text\": \"one two three four five six seven\"}\n");
  const auto whole = read(f, [] {
    SftDataOptions o;
    o.max_length.reset();
    return o;
  }())[0];
  ASSERT_GT(whole.input_ids.size(), 5U);
  SftDataOptions o;
  o.max_length = 5;
  SftDataReport report;
  const auto start = read(f, o, &report)[0];
  EXPECT_EQ(report.truncated, 1);
  EXPECT_EQ(start.input_ids,
            std::vector<int32_t>(whole.input_ids.begin(), whole.input_ids.begin() + 5));
  EXPECT_EQ(start.seq_lengths, std::vector<int32_t>{5});
  o.truncation = SftTruncation::kKeepEnd;
  const auto end = read(f, o)[0];
  EXPECT_EQ(end.input_ids, std::vector<int32_t>(whole.input_ids.end() - 5, whole.input_ids.end()));
  // Packing truncates later (pack_sft_examples), not here.
  o.packing = SftPacking::kBfd;
  EXPECT_EQ(read(f, o)[0].input_ids, whole.input_ids);
}

TEST(SftTruncate, RowsWithNoLabelLeftAreDroppedAndCounted) {
  const std::string long_prompt = "one two three four five six seven eight nine ten";
  const TempFile f("{\"prompt\": \"" + long_prompt + "\", \"completion\": \" end\"}\n" +
                   "{\"prompt\": \"a\", \"completion\": \" b\"}\n");
  SftDataOptions o;
  o.max_length = 4;
  SftDataReport report;
  const auto e = read(f, o, &report);
  ASSERT_EQ(e.size(), 1U);
  EXPECT_EQ(report.dropped_no_labels, 1);
  EXPECT_EQ(e[0].origin, f.name() + ":2");
  // Every row fully masked: nothing to train on.
  const TempFile only("{\"prompt\": \"" + long_prompt + "\", \"completion\": \" end\"}\n");
  try {
    read(only, o);
    FAIL();
  } catch (const InputError& err) {
    EXPECT_NE(std::string(err.what()).find("no trainable tokens after masking"), std::string::npos)
        << err.what();
  }
}

// --- packing --------------------------------------------------------------------------------

SftExample doc(int first, int length, const std::string& origin = "") {
  SftExample e;
  for (int i = 0; i < length; ++i) e.input_ids.push_back(first + i);
  e.labels_mask.assign(length, 1);
  e.seq_lengths = {length};
  e.origin = origin;
  return e;
}

// A plain best-fit-decreasing: sort by length (stable), put each into the open bin with the least
// room that fits, among equal rooms the one that reached that room first, else open a new bin.
std::vector<std::vector<int>> reference_bfd(const std::vector<int>& lengths, int capacity) {
  std::vector<int> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return std::min(lengths[a], capacity) > std::min(lengths[b], capacity);
  });
  std::vector<std::vector<int>> bins;
  std::vector<int> room;
  std::vector<long> since;  // when the bin's room took its current value
  long clock = 0;
  for (const int i : order) {
    const int len = std::min(lengths[i], capacity);
    int best = -1;
    for (size_t b = 0; b < bins.size(); ++b) {
      if (room[b] < len || room[b] == 0) continue;
      if (best < 0 || room[b] < room[best] || (room[b] == room[best] && since[b] < since[best]))
        best = static_cast<int>(b);
    }
    if (best < 0) {
      best = static_cast<int>(bins.size());
      bins.emplace_back();
      room.push_back(capacity);
      since.push_back(0);
    }
    bins[best].push_back(i);
    room[best] -= len;
    since[best] = ++clock;
  }
  return bins;
}

TEST(SftPacking, BfdMatchesTrlDocstringExample) {
  // trl/data_utils.py pack_dataset's example: [[1..5], [6,7], [8,9,10], [11]], seq_length 4.
  const std::vector<SftExample> in = {doc(1, 5, "a"), doc(6, 2, "b"), doc(8, 3, "c"),
                                      doc(11, 1, "d")};
  const auto out = pack_sft_examples(in, 4, SftPacking::kBfd);
  ASSERT_EQ(out.size(), 3U);
  EXPECT_EQ(out[0].input_ids, (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(out[1].input_ids, (std::vector<int32_t>{8, 9, 10, 11}));
  EXPECT_EQ(out[2].input_ids, (std::vector<int32_t>{6, 7}));
  EXPECT_EQ(out[1].seq_lengths, (std::vector<int32_t>{3, 1}));
  EXPECT_EQ(out[1].labels_mask, (std::vector<uint8_t>{0, 1, 1, 0}));  // each document's first token
  EXPECT_EQ(out[1].origin, "c");
}

TEST(SftPacking, BfdEqualsThePlainReferenceOnRandomLengths) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const int capacity = 4 + static_cast<int>(rng() % 60);
    const int n = 1 + static_cast<int>(rng() % 200);
    std::vector<int> lengths;
    std::vector<SftExample> in;
    int next = 0;
    for (int i = 0; i < n; ++i) {
      const int len = 1 + static_cast<int>(rng() % (capacity + capacity / 2));
      lengths.push_back(len);
      in.push_back(doc(next, len, std::to_string(i)));
      next += len;
    }
    const auto out = pack_sft_examples(in, capacity, SftPacking::kBfd);
    const auto want = reference_bfd(lengths, capacity);
    ASSERT_EQ(out.size(), want.size()) << trial;
    for (size_t b = 0; b < want.size(); ++b) {
      std::vector<int32_t> ids, seq;
      std::vector<uint8_t> mask;
      for (const int i : want[b]) {
        const int len = std::min(lengths[i], capacity);
        for (int t = 0; t < len; ++t) {
          ids.push_back(in[i].input_ids[t]);
          mask.push_back(t == 0 ? 0 : 1);
        }
        seq.push_back(len);
      }
      EXPECT_EQ(out[b].input_ids, ids) << trial << " bin " << b;
      EXPECT_EQ(out[b].seq_lengths, seq) << trial << " bin " << b;
      EXPECT_EQ(out[b].labels_mask, mask) << trial << " bin " << b;
      EXPECT_EQ(out[b].origin, std::to_string(want[b].front()));
    }
  }
}

TEST(SftPacking, BfdPacksWithinBatchesOfAThousandRows) {
  std::vector<SftExample> in;
  in.reserve(1500);
  for (int i = 0; i < 1500; ++i) in.push_back(doc(i, 1, std::to_string(i)));
  const auto out = pack_sft_examples(in, 600, SftPacking::kBfd);
  // Batch one: 1000 one-token rows -> 600 + 400; batch two: 500 rows -> one bin.
  ASSERT_EQ(out.size(), 3U);
  EXPECT_EQ(out[0].seq_lengths.size(), 600U);
  EXPECT_EQ(out[1].seq_lengths.size(), 400U);
  EXPECT_EQ(out[2].seq_lengths.size(), 500U);
  EXPECT_EQ(out[2].input_ids.front(), 1000);
}

TEST(SftPacking, WrappedCutsEveryMaxLengthTokens) {
  const std::vector<SftExample> in = {doc(1, 5, "a"), doc(6, 2, "b"), doc(8, 3, "c"),
                                      doc(11, 1, "d")};
  auto masked = in;
  masked[1].labels_mask = {0, 1};
  const auto out = pack_sft_examples(masked, 4, SftPacking::kWrapped);
  ASSERT_EQ(out.size(), 3U);
  EXPECT_EQ(out[0].input_ids, (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(out[1].input_ids, (std::vector<int32_t>{5, 6, 7, 8}));
  EXPECT_EQ(out[1].labels_mask, (std::vector<uint8_t>{1, 0, 1, 1}));  // masks travel unchanged
  EXPECT_EQ(out[2].input_ids, (std::vector<int32_t>{9, 10, 11}));
  EXPECT_EQ(out[1].origin, "a");
  EXPECT_EQ(out[2].origin, "c");
  EXPECT_EQ(out[2].seq_lengths, std::vector<int32_t>{3});
  EXPECT_THROW(pack_sft_examples(in, 0, SftPacking::kBfd), InputError);
  EXPECT_EQ(pack_sft_examples(in, 4, SftPacking::kNone).size(), 4U);
}

TEST(SftDump, OneJsonObjectPerExample) {
  SftExample e = doc(3, 2, "f.jsonl:3");
  e.labels_mask = {0, 1};
  EXPECT_EQ(
      sft_example_json(e),
      R"({"input_ids": [3, 4], "labels_mask": [0, 1], "seq_lengths": [2], "origin": "f.jsonl:3"})");
}

// --- validate-data --------------------------------------------------------------------------

TEST(DatasetValidation, FindingsNameFileLineAndSummaryCounts) {
  const TempFile f(
      "{\"text\": \"short\"}\n"
      "{\"text\": \"one two three four five six seven eight\"}\n"
      "{\"text\":  \"short\"}\n"
      "{\"text\": 3}\n"
      "not json\n"
      R"({"messages": [{"role": "wizard", "content": "x"}]})"
      "\n");
  SftDataOptions o;
  o.max_length = 6;
  std::vector<std::string> lines;
  const DatasetValidationReport r = validate_dataset(
      {f.path()}, &tokenizer(), o, [&](const std::string& l) { lines.push_back(l); });
  EXPECT_EQ(r.rows, 6);
  EXPECT_EQ(r.bad_rows, 3);
  EXPECT_EQ(r.bad_by_reason.at("mistyped field"), 1);
  EXPECT_EQ(r.bad_by_reason.at("invalid JSON"), 1);
  EXPECT_EQ(r.bad_by_reason.at("missing field"), 1);  // a text-kind row without "text"
  EXPECT_EQ(r.over_length, 1);
  EXPECT_EQ(r.duplicates, 1);
  const std::string name = f.name();
  const auto has_line = [&](const std::string& s) {
    return std::any_of(lines.begin(), lines.end(),
                       [&](const std::string& l) { return l.find(s) != std::string::npos; });
  };
  const int long_tokens = static_cast<int>(
      encode_text_with_bos(tokenizer(), "one two three four five six seven eight<eos>").size());
  EXPECT_TRUE(has_line(name + ":2: " + std::to_string(long_tokens) + " tokens, over max_length 6"));
  EXPECT_TRUE(has_line(name + ":3: duplicate row: the same content as " + name + ":1"));
  EXPECT_TRUE(has_line(name + ":5: invalid JSON at column"));
  EXPECT_EQ(r.longest, long_tokens);
  EXPECT_EQ(r.longest_where, name + ":2");
  const std::string summary = validation_summary(r, o);
  EXPECT_NE(summary.find("6 rows of text data, 3 bad"), std::string::npos) << summary;
  EXPECT_NE(summary.find("1 duplicates"), std::string::npos) << summary;
}

TEST(DatasetValidation, ChatRowsAndPreferenceRowsWithoutTokenizer) {
  const TempFile chat(
      chat_line() + "\n" +
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]})" +
      "\n" +
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}]})" +
      "\n");
  std::vector<std::string> lines;
  const auto r = validate_dataset({chat.path()}, nullptr, {},
                                  [&](const std::string& l) { lines.push_back(l); });
  EXPECT_EQ(r.bad_by_reason.at("empty model turn"), 1);
  EXPECT_EQ(r.bad_by_reason.at("turns out of order"), 1);
  EXPECT_FALSE(r.counted_tokens);
  ASSERT_EQ(lines.size(), 2U);
  EXPECT_EQ(lines[0].rfind(chat.name() + ":2:", 0), 0U) << lines[0];

  const TempFile pref(R"({"prompt": "p", "chosen": "a", "rejected": "b"})"
                      "\n"
                      R"({"prompt": "p", "chosen": "a"})"
                      "\n");
  const auto p = validate_dataset({pref.path()}, &tokenizer(), {}, [](const std::string&) {});
  EXPECT_EQ(*p.kind, DatasetKind::kPreference);
  EXPECT_EQ(p.bad_by_reason.at("missing field"), 1);
  EXPECT_GT(p.tokens, 0);
}

}  // namespace
}  // namespace gemma
