#include "trainer/cli_flags.h"

#include <cmath>

#include <cerrno>
#include <cstdlib>

#include "model/input_error.h"

namespace gemma {

namespace {

bool parse_int64(const std::string& text, int64_t& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || end != text.c_str() + text.size()) return false;
  out = v;
  return true;
}

}  // namespace

CliFlags::CliFlags(std::string command, const std::vector<std::string>& args,
                   const std::set<std::string>& value_flags,
                   const std::set<std::string>& switch_flags)
    : command_(std::move(command)) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0) {
      throw InputError(command_ + ": unexpected argument \"" + arg + "\" (flags start with --)");
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (switch_flags.count(name)) {
      if (inline_value) throw InputError(command_ + ": --" + name + " takes no value");
      values_[name] = "1";
      continue;
    }
    if (!value_flags.count(name)) {
      std::string known;
      for (const auto& f : value_flags) known += " --" + f;
      for (const auto& f : switch_flags) known += " --" + f;
      throw InputError(command_ + ": unknown flag --" + name + " (known:" + known + ")");
    }
    if (!inline_value) {
      if (i + 1 >= args.size()) throw InputError(command_ + ": --" + name + " needs a value");
      value = args[++i];
    }
    if (values_.count(name)) throw InputError(command_ + ": --" + name + " given twice");
    values_[name] = value;
  }
}

std::string CliFlags::required(const std::string& name) const {
  const auto it = values_.find(name);
  if (it == values_.end()) throw InputError(command_ + ": --" + name + " is required");
  return it->second;
}

std::optional<std::string> CliFlags::optional(const std::string& name) const {
  const auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string CliFlags::value_or(const std::string& name, const std::string& fallback) const {
  return optional(name).value_or(fallback);
}

int64_t CliFlags::integer_or(const std::string& name, int64_t fallback) const {
  const auto v = optional(name);
  if (!v) return fallback;
  int64_t out = 0;
  if (!parse_int64(*v, out)) {
    throw InputError(command_ + ": --" + name + " expects an integer, found \"" + *v + "\"");
  }
  return out;
}

double CliFlags::number_or(const std::string& name, double fallback) const {
  const auto v = optional(name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    const double d = std::stod(*v, &used);
    if (used == v->size() && std::isfinite(d)) return d;
  } catch (const std::exception&) {
  }
  throw InputError(command_ + ": --" + name + " expects a number, found \"" + *v + "\"");
}

std::string CliFlags::choice_or(const std::string& name, const std::string& fallback,
                                const std::vector<std::string>& choices) const {
  const std::string v = value_or(name, fallback);
  for (const auto& c : choices) {
    if (v == c) return v;
  }
  std::string list;
  for (const auto& c : choices) list += (list.empty() ? "" : "|") + c;
  throw InputError(command_ + ": --" + name + " expects " + list + ", found \"" + v + "\"");
}

std::vector<int64_t> parse_id_list(const std::string& text, const std::string& flag) {
  std::vector<int64_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = text.find(',', start);
    const std::string item =
        text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    int64_t id = 0;
    if (!parse_int64(item, id) || id < 0) {
      throw InputError(flag + ": expected comma-separated non-negative token ids, found \"" + item +
                       "\"");
    }
    ids.push_back(id);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return ids;
}

}  // namespace gemma
