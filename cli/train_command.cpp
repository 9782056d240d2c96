#include "cli/train_command.h"

#include <iostream>

#include "io/input_error.h"
#include "trainer/recipe.h"
#include "trainer/training_loop.h"

namespace gemma {

int run_train_command(const CliFlags& flags) {
  // The recipe and its overrides are read and checked in full (trainer/recipe.h): a bad key or
  // value is an error here, before anything else happens.
  const Recipe recipe = load_recipe(flags.required("recipe"), flags.values("set"));
  if (flags.has("print-config")) {
    std::cout << print_recipe(recipe);
    return 0;
  }
  return run_training(recipe);
}

}  // namespace gemma
