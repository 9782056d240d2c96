// The command table is the one source of the CLI's commands and flags: the README's command list
// must say exactly what it holds, and the flag parser must enforce what each row declares.
#include "cli/command_table.h"

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "io/input_error.h"

namespace gemma {
namespace {

// The README's "## The commands" code block: command name -> the flags its lines name.
std::map<std::string, std::set<std::string>> readme_commands() {
  std::ifstream in(std::string(GEMMA_SOURCE_DIR) + "/README.md");
  std::stringstream text;
  text << in.rdbuf();
  const std::string readme = text.str();
  const size_t section = readme.find("## The commands");
  EXPECT_NE(section, std::string::npos);
  const size_t open = readme.find("```sh\n", section);
  const size_t close = readme.find("```", open + 6);
  std::istringstream block(readme.substr(open + 6, close - open - 6));
  std::map<std::string, std::set<std::string>> out;
  std::string line, current;
  const std::regex flag("--([a-z0-9-]+)");
  while (std::getline(block, line)) {
    if (line.rfind("gemma-train ", 0) == 0) {
      std::istringstream words(line);
      std::string program, name;
      words >> program >> name;
      current = name.rfind("--", 0) == 0 ? "train" : name;  // gemma-train --recipe R
      out[current];
    }
    if (current.empty()) continue;
    for (std::sregex_iterator it(line.begin(), line.end(), flag), end; it != end; ++it)
      out[current].insert((*it)[1]);
  }
  return out;
}

TEST(CommandTable, ReadmeListsExactlyTheCommandsAndFlagsOfTheTable) {
  const auto readme = readme_commands();
  std::set<std::string> table_names;
  for (const CommandSpec& c : command_table()) {
    table_names.insert(c.name);
    ASSERT_TRUE(readme.count(c.name)) << "README's command list lacks `" << c.name << "`";
    std::set<std::string> flags;
    for (const FlagSpec& f : c.flags) flags.insert(f.name);
    for (const FlagSpec& f : global_flags()) flags.insert(f.name);
    for (const std::string& f : flags) {
      if (f == "threads") continue;  // global: checked below
      EXPECT_TRUE(readme.at(c.name).count(f)) << "README: `" << c.name << "` lacks --" << f;
    }
    for (const std::string& f : readme.at(c.name))
      EXPECT_TRUE(flags.count(f)) << "README: `" << c.name << "` names --" << f
                                  << ", which the command table does not have";
  }
  for (const auto& [name, flags] : readme)
    EXPECT_TRUE(name == "<command>" || table_names.count(name))
        << "README lists `" << name << "`, not in the table";
  // Global flags are said once, on a line of their own.
  ASSERT_TRUE(readme.count("<command>"))
      << "README lacks the `gemma-train <command> --threads` line";
  for (const FlagSpec& f : global_flags()) EXPECT_TRUE(readme.at("<command>").count(f.name));
}

TEST(CommandTable, HelpComesFromTheTable) {
  const std::string help = binary_help();
  for (const CommandSpec& c : command_table()) {
    EXPECT_NE(help.find("  " + c.name), std::string::npos) << c.name;
    EXPECT_NE(help.find(c.summary), std::string::npos) << c.name;
    const std::string own = command_help(c);
    for (const FlagSpec& f : c.flags) {
      EXPECT_NE(own.find("--" + f.name), std::string::npos) << c.name << " --" << f.name;
      EXPECT_NE(own.find(f.help), std::string::npos) << c.name << " --" << f.name;
    }
    EXPECT_NE(own.find("--threads"), std::string::npos);
  }
}

TEST(CliFlags, ParsesOnceIntoTypesAndRefusesWhatTheRowDoesNotAllow) {
  const std::vector<FlagSpec> specs = {
      {"model", "DIR", "", "m", true},      {"dtype", "f32|bf16", "f32", "d"},
      {"shard-size", "SIZE", "5GB", "s"},   {"r", "N", "8", "r"},
      {"set", "K=V", "", "s", false, true}, {"dora", "", "", "d"}};
  const CliFlags f(
      "cmd", {"--model", "m", "--dtype=bf16", "--set", "a.b=1", "--set", "c=2", "--dora"}, specs);
  EXPECT_EQ(f.required("model"), "m");
  EXPECT_EQ(f.dtype("dtype"), torch::kBFloat16);
  EXPECT_EQ(f.bytes("shard-size", 1000000), 5000000000ULL);
  EXPECT_EQ(f.integer("r"), 8);
  EXPECT_EQ(f.values("set"), (std::vector<std::string>{"a.b=1", "c=2"}));
  EXPECT_TRUE(f.has("dora"));
  EXPECT_FALSE(f.has("r"));

  const auto error_of = [&](const std::vector<std::string>& args) {
    try {
      CliFlags g("cmd", args, specs);
      g.integer("r");
      return std::string();
    } catch (const InputError& e) {
      return std::string(e.what());
    }
  };
  EXPECT_NE(error_of({}).find("--model is required"), std::string::npos);
  EXPECT_NE(error_of({"--model", "m", "--dtype", "f64"}).find("expects f32|bf16"),
            std::string::npos);
  EXPECT_NE(error_of({"--model", "m", "--bogus", "1"}).find("unknown flag --bogus"),
            std::string::npos);
  EXPECT_NE(error_of({"--model", "m", "--r", "x"}).find("expects an integer"), std::string::npos);
  EXPECT_NE(error_of({"--model", "m", "--r", "1", "--r", "2"}).find("given twice"),
            std::string::npos);
  EXPECT_NE(error_of({"--model", "m", "--dora=1"}).find("takes no value"), std::string::npos);
  EXPECT_NE(error_of({"--model"}).find("needs a value"), std::string::npos);
  // A forgotten value is not filled by the next flag; `--flag=--value` says it is meant.
  EXPECT_NE(error_of({"--model", "--r", "3"}).find("--model needs a value, found the flag"),
            std::string::npos);
  const CliFlags meant("cmd", {"--model=--odd-name"}, specs);
  EXPECT_EQ(meant.value("model"), "--odd-name");
}

TEST(CliFlags, UpperCaseAlternativesNameKindsNotChoices) {
  EXPECT_TRUE((FlagSpec{"config", "FILE|NAME"}.choices().empty()));
  EXPECT_EQ((FlagSpec{"init", "peft|random"}.choices()),
            (std::vector<std::string>{"peft", "random"}));
  const CliFlags f("init", {"--config", "/tmp/x.json"}, {{"config", "FILE|NAME", "", "c", true}});
  EXPECT_EQ(f.value("config"), "/tmp/x.json");
}

TEST(CliFlags, SizesTakeUnits) {
  EXPECT_EQ(parse_size("8GB", 1, "x"), 8000000000ULL);
  EXPECT_EQ(parse_size("500MB", 1, "x"), 500000000ULL);
  EXPECT_EQ(parse_size("1.5GiB", 1, "x"), 1610612736ULL);
  EXPECT_EQ(parse_size("300", 1000000, "x"), 300000000ULL);
  EXPECT_EQ(parse_size("64KiB", 1, "x"), 65536ULL);
  for (const char* bad : {"", "GB", "-1GB", "0", "1XB", "nan", "1e30TB"})
    EXPECT_THROW(parse_size(bad, 1, "x"), InputError) << bad;
}

}  // namespace
}  // namespace gemma
