#include "cli/cli_flags.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "io/input_error.h"

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

bool parse_double(const std::string& text, double& out) {
  try {
    size_t used = 0;
    const double d = std::stod(text, &used);
    if (used != text.size() || !std::isfinite(d)) return false;
    out = d;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

std::vector<std::string> FlagSpec::choices() const {
  std::vector<std::string> out;
  // "f32|bf16" lists the accepted values; "FILE|NAME" (upper case) only names the kinds of value.
  if (value.find('|') == std::string::npos ||
      std::any_of(value.begin(), value.end(), [](char c) { return std::isupper(c) != 0; }))
    return out;
  size_t start = 0;
  while (start <= value.size()) {
    const size_t bar = std::min(value.find('|', start), value.size());
    out.push_back(value.substr(start, bar - start));
    start = bar + 1;
  }
  return out;
}

CliFlags::CliFlags(std::string command, const std::vector<std::string>& args,
                   const std::vector<FlagSpec>& specs)
    : command_(std::move(command)), specs_(specs) {
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
    const FlagSpec* flag = nullptr;
    for (const FlagSpec& s : specs_) {
      if (s.name == name) flag = &s;
    }
    if (flag == nullptr) {
      std::string known;
      for (const FlagSpec& s : specs_) known += " --" + s.name;
      throw InputError(command_ + ": unknown flag --" + name + " (known:" + known + ")");
    }
    if (flag->value.empty()) {
      if (inline_value) throw InputError(command_ + ": --" + name + " takes no value");
      value = "1";
    } else if (!inline_value) {
      if (i + 1 >= args.size()) throw InputError(command_ + ": --" + name + " needs a value");
      value = args[++i];
      // `--out --model` is a forgotten value, not an output named "--model".
      if (value.rfind("--", 0) == 0)
        throw InputError(command_ + ": --" + name + " needs a value, found the flag \"" + value +
                         "\" (write --" + name + "=" + value + " if that is the value)");
    }
    if (values_.count(name) && !flag->repeatable)
      throw InputError(command_ + ": --" + name + " given twice");
    const std::vector<std::string> choices = flag->choices();
    if (!choices.empty() && std::find(choices.begin(), choices.end(), value) == choices.end()) {
      throw InputError(command_ + ": --" + name + " expects " + flag->value + ", found \"" + value +
                       "\"");
    }
    values_[name].push_back(value);
  }
  for (const FlagSpec& s : specs_) {
    if (s.required && !has(s.name)) throw InputError(command_ + ": --" + s.name + " is required");
  }
}

const FlagSpec& CliFlags::spec(const std::string& name) const {
  for (const FlagSpec& s : specs_) {
    if (s.name == name) return s;
  }
  TORCH_CHECK(false, "CliFlags: the command table has no flag --", name, " for ", command_);
}

std::string CliFlags::required(const std::string& name) const {
  spec(name);
  const auto it = values_.find(name);
  if (it == values_.end()) throw InputError(command_ + ": --" + name + " is required");
  return it->second.back();
}

std::optional<std::string> CliFlags::optional(const std::string& name) const {
  spec(name);
  const auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second.back();
}

std::string CliFlags::value(const std::string& name) const {
  return optional(name).value_or(spec(name).fallback);
}

std::vector<std::string> CliFlags::values(const std::string& name) const {
  spec(name);
  const auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

int64_t CliFlags::integer(const std::string& name) const {
  const std::string v = value(name);
  int64_t out = 0;
  if (!parse_int64(v, out)) {
    throw InputError(command_ + ": --" + name + " expects an integer, found \"" + v + "\"");
  }
  return out;
}

double CliFlags::number(const std::string& name) const {
  const std::string v = value(name);
  double out = 0;
  if (!parse_double(v, out)) {
    throw InputError(command_ + ": --" + name + " expects a number, found \"" + v + "\"");
  }
  return out;
}

uint64_t CliFlags::bytes(const std::string& name, uint64_t plain_unit_bytes) const {
  return parse_size(value(name), plain_unit_bytes, command_ + ": --" + name);
}

torch::ScalarType CliFlags::dtype(const std::string& name) const {
  const std::string v = value(name);
  if (v == "f32") return torch::kFloat32;
  if (v == "bf16") return torch::kBFloat16;
  if (v == "f16") return torch::kFloat16;
  throw InputError(command_ + ": --" + name + " expects f32, bf16 or f16, found \"" + v + "\"");
}

torch::Device CliFlags::device(const std::string& name) const {
  const std::string v = value(name);
  if (v == "cpu") return torch::Device(torch::kCPU);
  if (v == "cuda") {
    if (!torch::cuda::is_available())
      throw InputError(command_ + ": --" + name + " cuda: no CUDA device is available");
    return torch::Device(torch::kCUDA);
  }
  throw InputError(command_ + ": --" + name + " expects cpu or cuda, found \"" + v + "\"");
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

uint64_t parse_size(const std::string& text, uint64_t plain_unit_bytes, const std::string& what) {
  // Decimal units as disk and GPU vendors write them; binary ones spelt with an i.
  static const std::vector<std::pair<std::string, double>> kUnits = {
      {"KiB", 1024.0},
      {"MiB", 1024.0 * 1024},
      {"GiB", 1024.0 * 1024 * 1024},
      {"TiB", 1024.0 * 1024 * 1024 * 1024},
      {"KB", 1e3},
      {"MB", 1e6},
      {"GB", 1e9},
      {"TB", 1e12},
      {"B", 1.0}};
  double scale = static_cast<double>(plain_unit_bytes);
  std::string number = text;
  for (const auto& [unit, factor] : kUnits) {
    if (number.size() > unit.size() &&
        number.compare(number.size() - unit.size(), unit.size(), unit) == 0) {
      number.resize(number.size() - unit.size());
      scale = factor;
      break;
    }
  }
  double value = 0;
  if (!parse_double(number, value) || value <= 0 || value * scale > 1.8e19 || value * scale < 1.0) {
    throw InputError(what + " expects a positive size such as 8GB, 500MB or 1.5GiB, found \"" +
                     text + "\"");
  }
  return static_cast<uint64_t>(std::llround(value * scale));
}

}  // namespace gemma
