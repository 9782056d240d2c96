#include "cli/train_command.h"

#include <iostream>

#include "io/input_error.h"
#include "trainer/recipe.h"

namespace gemma {

int run_train_command(const CliFlags& flags) {
  // The recipe and its overrides are read and checked in full (trainer/recipe.h): a bad key or
  // value is an error here, before anything else happens.
  const Recipe recipe = load_recipe(flags.required("recipe"), flags.values("set"));
  if (flags.has("print-config")) {
    std::cout << print_recipe(recipe);
    return 0;
  }
  // The command's place is ready (flags, routing, help, the recipe); the loop it runs is not.
  std::cerr << "gemma-train train: " << flags.required("recipe")
            << " is a valid recipe, but the training loop is not part of this build yet; nothing "
               "was run\n";
  return 2;
}

}  // namespace gemma
