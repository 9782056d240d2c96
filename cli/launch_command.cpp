#include "cli/launch_command.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "io/input_error.h"

namespace gemma {
namespace {

std::vector<std::string> split_words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

// A word as a POSIX shell reads it back, for --dry-run.
std::string shell_quoted(const std::string& word) {
  if (!word.empty() && word.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                              "0123456789-_./=:,+@%") == std::string::npos)
    return word;
  std::string out = "'";
  for (const char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

std::vector<std::string> launch_command_line(const CliFlags& flags, const std::string& binary) {
  const int64_t nproc = flags.integer("nproc");
  constexpr int64_t kMaxRanks = 1 << 20;
  if (nproc < 1 || nproc > kMaxRanks)
    throw InputError("launch: --nproc expects an integer from 1 to " + std::to_string(kMaxRanks) +
                     ", found \"" + flags.value("nproc") + "\"");
  std::vector<std::string> train = flags.trailing();
  // `-- gemma-train --recipe R` and `-- --recipe R` say the same.
  if (!train.empty() && std::filesystem::path(train[0]).filename() == "gemma-train")
    train.erase(train.begin());
  if (train.empty())
    throw InputError(
        "launch: give the training's arguments after --, e.g. gemma-train launch --nproc 2 -- "
        "--recipe recipes/demo.yaml");
  if (train[0] != "train" && train[0].rfind("--", 0) != 0)
    throw InputError("launch: runs the train command; found \"" + train[0] +
                     "\" after -- (give --recipe R and its --set flags)");
  std::vector<std::string> line = {flags.value("mpirun"), "-np", std::to_string(nproc)};
  if (::geteuid() == 0) line.emplace_back("--allow-run-as-root");
  if (flags.has("hosts")) {
    line.insert(line.end(), {"--host", flags.value("hosts")});
  } else {
    // One machine: as many ranks as asked, whatever Open MPI counts as its slots.
    line.emplace_back("--oversubscribe");
  }
  // Each rank runs its own thread pool over its share of the cores (the train command divides
  // them): binding a rank to one core would put all its threads there.
  line.insert(line.end(), {"--bind-to", "none"});
  // What a rank on another machine needs of this environment.
  for (const char* name : {"PATH", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"}) {
    if (std::getenv(name) != nullptr) line.insert(line.end(), {"-x", name});
  }
  for (const std::string& w : split_words(flags.value("mpi-args"))) line.push_back(w);
  line.push_back(binary);
  line.insert(line.end(), train.begin(), train.end());
  return line;
}

int run_launch_command(const CliFlags& flags) {
  std::error_code ec;
  std::filesystem::path binary = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) binary = "gemma-train";
  const std::vector<std::string> line = launch_command_line(flags, binary.string());
  if (flags.has("dry-run")) {
    std::string text;
    for (const std::string& w : line) text += (text.empty() ? "" : " ") + shell_quoted(w);
    std::cout << text << "\n";
    return 0;
  }
  std::vector<char*> argv;
  argv.reserve(line.size() + 1);
  for (const std::string& w : line) argv.push_back(const_cast<char*>(w.c_str()));
  argv.push_back(nullptr);
  std::cout.flush();
  ::execvp(argv[0], argv.data());
  throw InputError("launch: cannot run " + line[0] + ": " + std::strerror(errno) +
                   " (install Open MPI: Debian's openmpi-bin; or give --mpirun PATH)");
}

}  // namespace gemma
