// libFuzzer target: recipe YAML and `--set` overrides -> load_recipe -> print_recipe, and the
// printed recipe loads back to the same print (recipe.h's promise). The input is the YAML file;
// each of its lines "#--set section.key=value" (a YAML comment, at most 4) is also an override.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "io/input_error.h"
#include "tests/fuzz/fuzz_scratch_folder.h"
#include "trainer/recipe.h"

namespace {

std::vector<std::string> overrides_in(std::string_view yaml) {
  constexpr std::string_view kMark = "#--set ";
  std::vector<std::string> overrides;
  for (size_t start = 0; start < yaml.size() && overrides.size() < 4;) {
    size_t end = yaml.find('\n', start);
    if (end == std::string_view::npos) end = yaml.size();
    const std::string_view line = yaml.substr(start, end - start);
    if (line.substr(0, kMark.size()) == kMark) overrides.emplace_back(line.substr(kMark.size()));
    start = end + 1;
  }
  return overrides;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view yaml(reinterpret_cast<const char*>(data), size);
  std::string printed;
  try {
    printed = gemma::print_recipe(gemma::load_recipe(
        gemma_fuzz::write_scratch_file("recipe.yaml", yaml), overrides_in(yaml)));
  } catch (const gemma::InputError&) {
    return 0;
  }
  // A recipe that loaded prints as YAML that loads again (an InputError here is a finding too).
  const gemma::Recipe again =
      gemma::load_recipe(gemma_fuzz::write_scratch_file("printed.yaml", printed));
  if (gemma::print_recipe(again) != printed) __builtin_trap();
  return 0;
}
