// The output writer: what it refuses (symlinks, FIFOs, device nodes, its own inputs), temporary
// names nobody can predict or plant, exactly one winner among concurrent writers, no temporary
// left by SIGTERM, and stale temporaries named.
#include "io/atomic_output.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "io/file_identity.h"
#include "io/input_error.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void spit(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

std::set<std::string> temporaries_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.find(kTemporaryMarker) != std::string::npos) out.insert(name);
  }
  return out;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(AtomicOutput, RefusesASymlinkAndLeavesItAndItsTargetAlone) {
  testing::ScratchDir dir;
  const fs::path target = dir.path() / "precious.txt", link = dir.path() / "out.txt";
  spit(target, "keep me");
  fs::create_symlink(target, link);
  const std::string why = error_of([&] { write_file_atomically(link, "new"); });
  EXPECT_NE(why.find("symbolic link"), std::string::npos) << why;
  EXPECT_NE(why.find(link.string()), std::string::npos) << why;
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(slurp(target), "keep me");
  // A symlink to a device is refused the same way, before anything is opened.
  fs::create_symlink("/dev/null", dir.path() / "null");
  EXPECT_NE(error_of([&] { write_file_atomically(dir.path() / "null", "x"); }).find("symbolic"),
            std::string::npos);
  EXPECT_TRUE(temporaries_in(dir.path()).empty());
}

TEST(AtomicOutput, RefusesFifosDeviceNodesAndFolders) {
  testing::ScratchDir dir;
  const fs::path fifo = dir.path() / "pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(error_of([&] { write_file_atomically(fifo, "x"); }).find("not a regular file"),
            std::string::npos);
  EXPECT_TRUE(fs::is_fifo(fifo));
  // A character device like /dev/null, made inside the test's folder (needs CAP_MKNOD).
  const fs::path device = dir.path() / "null-device";
  if (::mknod(device.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0) {
    EXPECT_NE(error_of([&] { write_file_atomically(device, "x"); }).find("device"),
              std::string::npos);
    EXPECT_TRUE(fs::is_character_file(device));
  }
  fs::create_directory(dir.path() / "folder");
  EXPECT_NE(error_of([&] { write_file_atomically(dir.path() / "folder", "x"); }).find("folder"),
            std::string::npos);
  EXPECT_TRUE(temporaries_in(dir.path()).empty());
}

TEST(AtomicOutput, RefusesAnInputOfTheCommand) {
  testing::ScratchDir dir;
  const fs::path prompts = dir.path() / "prompts.jsonl", alias = dir.path() / "alias.jsonl";
  spit(prompts, "{\"prompt\": \"hi\"}\n");
  fs::create_hard_link(prompts, alias);  // the same file under another name
  const NotingInputs noting;             // as run_cli does for a command
  (void)read_text_file(prompts);
  for (const fs::path& out : {prompts, alias}) {
    const std::string why = error_of([&] { write_file_atomically(out, "replaced"); });
    EXPECT_NE(why.find("also an input"), std::string::npos) << why;
  }
  EXPECT_EQ(slurp(prompts), "{\"prompt\": \"hi\"}\n");
}

TEST(AtomicOutput, TemporaryNamesAreUnpredictableAndPlantedLinksRedirectNothing) {
  testing::ScratchDir dir;
  const fs::path out = dir.path() / "out.bin", victim = dir.path() / "victim";
  spit(victim, "untouched");
  // The names an older writer used (`out.bin.tmp-<pid>`) and a guess at ours, planted.
  fs::create_symlink(victim, dir.path() / ("out.bin.tmp-" + std::to_string(::getpid())));
  fs::create_symlink(victim, dir.path() / (".out.bin" + std::string(kTemporaryMarker) +
                                           std::to_string(::getpid()) + "-0000000000000000"));
  std::set<std::string> seen;
  for (int i = 0; i < 4; ++i) {
    AtomicFileWriter w(out);
    w.write("data", 4);
    std::set<std::string> now = temporaries_in(dir.path());
    for (const std::string& name : now) {
      if (fs::is_symlink(dir.path() / name)) continue;
      EXPECT_EQ(name.size(), std::string(".out.bin").size() + std::strlen(kTemporaryMarker) +
                                 std::to_string(::getpid()).size() + 1 + 16)
          << name;
      seen.insert(name);
    }
    w.commit();
  }
  EXPECT_EQ(seen.size(), 4u);  // a fresh random name each time
  EXPECT_EQ(slurp(out), "data");
  EXPECT_EQ(slurp(victim), "untouched");
}

TEST(AtomicOutput, OfTwoWritersThatRefuseToReplaceExactlyOneWins) {
  testing::ScratchDir dir;
  const fs::path out = dir.path() / "model.gguf";
  AtomicFileWriter first(out, ExistingOutput::kRefuse), second(out, ExistingOutput::kRefuse);
  first.write("first", 5);
  second.write("second", 6);
  second.commit();
  const std::string why = error_of([&] { first.commit(); });
  EXPECT_NE(why.find("already exists"), std::string::npos) << why;
  EXPECT_EQ(slurp(out), "second");
  EXPECT_TRUE(temporaries_in(dir.path()).empty());

  // Folders always refuse: a second run that publishes first makes the slower one fail.
  const fs::path folder = dir.path() / "merged";
  std::string inner_error;
  const std::string outer_error = error_of([&] {
    write_folder_atomically(folder, [&](const fs::path& tmp) {
      spit(tmp / "a", "outer");
      inner_error = error_of([&] {
        write_folder_atomically(folder, [&](const fs::path& t) { spit(t / "a", "inner"); });
      });
    });
  });
  EXPECT_EQ(inner_error, "");
  EXPECT_NE(outer_error.find("already exists"), std::string::npos) << outer_error;
  EXPECT_EQ(slurp(folder / "a"), "inner");
  EXPECT_TRUE(temporaries_in(dir.path()).empty());
  // An empty folder already there is refused too (rename(2) alone would replace it).
  fs::create_directory(dir.path() / "empty");
  EXPECT_NE(error_of([&] {
              write_folder_atomically(dir.path() / "empty", [](const fs::path&) {});
            }).find("already exists"),
            std::string::npos);
}

TEST(AtomicOutput, SigtermMidWriteLeavesNoTemporary) {
  testing::ScratchDir dir;
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(ready[0]);
    remove_temporaries_on_signals();
    AtomicFileWriter file(dir.path() / "big.bin");
    file.write("partial", 7);
    write_folder_atomically(dir.path() / "checkpoint", [&](const fs::path& tmp) {
      fs::create_directories(tmp / "nested" / "deeper");
      spit(tmp / "nested" / "deeper" / "weights", "half");
      spit(tmp / "optimizer", "half");
      const char byte = 1;
      (void)!::write(ready[1], &byte, 1);
      for (;;) ::pause();
    });
    ::_exit(0);
  }
  ::close(ready[1]);
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  ::close(ready[0]);
  EXPECT_EQ(temporaries_in(dir.path()).size(), 2u);
  ::kill(child, SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << status;
  EXPECT_TRUE(temporaries_in(dir.path()).empty());
  EXPECT_FALSE(fs::exists(dir.path() / "checkpoint"));
  EXPECT_FALSE(fs::exists(dir.path() / "big.bin"));
}

TEST(AtomicOutput, NamesTheStaleTemporariesOfProcessesThatAreGone) {
  testing::ScratchDir dir;
  // pid_max is at most 2^22: this process cannot exist.
  const std::string stale =
      ".out.bin" + std::string(kTemporaryMarker) + "99999999-0123456789abcdef";
  spit(dir.path() / stale, "left over");
  ::testing::internal::CaptureStderr();
  write_file_atomically(dir.path() / "out.bin", "x");
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find(stale), std::string::npos) << err;
  EXPECT_NE(err.find("interrupted run"), std::string::npos) << err;
  EXPECT_TRUE(fs::exists(dir.path() / stale));  // named, not deleted: it may be someone's work
}

TEST(ReadTextFile, OnlyRegularFilesBelowTheLimit) {
  testing::ScratchDir dir;
  const fs::path fifo = dir.path() / "config.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);  // would block forever if opened
  EXPECT_NE(error_of([&] { read_text_file(fifo); }).find("not a regular file"), std::string::npos);
  EXPECT_NE(error_of([&] { read_text_file("/dev/zero"); }).find("not a regular file"),
            std::string::npos);
  spit(dir.path() / "big.json", std::string(5000, ' '));
  const std::string why = error_of([&] { read_text_file(dir.path() / "big.json", 4096); });
  EXPECT_NE(why.find("5000 bytes, over the limit of 4096"), std::string::npos) << why;
  EXPECT_EQ(read_text_file(dir.path() / "big.json", 5000).size(), 5000u);
}

}  // namespace
}  // namespace gemma
