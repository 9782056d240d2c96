#include "cli/plan_command.h"

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "io/input_error.h"
#include "model/gemma4_config.h"
#include "trainer/memory_plan.h"
#include "trainer/recipe.h"

namespace gemma {

namespace {

namespace fs = std::filesystem;

// The released variants' bundled configs, and the names a model folder or hub id spells them
// with ("google/gemma-4-E4B-it" -> e4b).
const char* const kReleased[] = {"26b-a4b", "e2b", "e4b", "31b"};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// config.json's text and where it came from: the folder's own file, else the bundled config of
// the released variant the name spells.
std::pair<std::string, std::string> config_for(const std::string& model) {
  const fs::path file = fs::path(model) / "config.json";
  if (fs::is_regular_file(file)) return {read_text_file(file), file.string()};
  if (const auto json = bundled_config_json(model)) return {*json, "bundled " + lower(model)};
  const std::string name = lower(fs::path(model).filename().string());
  for (const std::string variant : kReleased) {
    if (name.find(variant) != std::string::npos)
      return {*bundled_config_json(variant),
              "bundled " + variant + " (no config.json at " + model + ")"};
  }
  throw InputError("plan: " + model +
                   " has no config.json and names no released variant (e2b, e4b, 31b, 26b-a4b) "
                   "or bundled config");
}

}  // namespace

int run_plan_command(const CliFlags& flags) {
  const Recipe recipe = load_recipe(flags.required("recipe"), flags.values("set"));
  const std::string model = flags.optional("model").value_or(recipe.model.name_or_path);
  const auto [config_text, where] = config_for(model);
  const Gemma4Config config = parse_gemma4_config(config_text, where);
  std::optional<int64_t> budget;
  if (flags.has("device-memory"))
    budget = static_cast<int64_t>(flags.bytes("device-memory", 1'000'000));
  const MemoryPlan plan = plan_memory(config, planned_dtype(recipe, config_text), recipe, budget,
                                      stored_dtype(config_text));
  if (flags.has("json")) {
    nlohmann::json out = memory_plan_json(plan);
    out["config"] = where;
    std::cout << out.dump(2) << "\n";
  } else {
    std::cout << "memory plan of " << recipe.source << " for " << where << "\n"
              << memory_plan_table(plan);
  }
  return plan.fits() ? 0 : 3;
}

}  // namespace gemma
