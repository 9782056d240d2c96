#include "cli/train_command.h"

#include <algorithm>
#include <chrono>
#include <iostream>
#include <thread>

#include <torch/torch.h>

#include "io/input_error.h"
#include "trainer/launch_environment.h"
#include "trainer/process_group.h"
#include "trainer/recipe.h"
#include "trainer/training_loop.h"

namespace gemma {

namespace {

// The recipe and its overrides, read and checked in full (trainer/recipe.h), with the flags that
// are not recipe keys.
Recipe recipe_of(const CliFlags& flags) {
  Recipe recipe = load_recipe(flags.required("recipe"), flags.values("set"));
  if (flags.has("device-memory"))
    recipe.device_memory = static_cast<int64_t>(flags.bytes("device-memory", 1'000'000));
  recipe.force = flags.has("force");
  return recipe;
}

}  // namespace

int run_train_command(const CliFlags& flags) {
  // One process, or one rank of an MPI launch (mpirun, srun --mpi=pmix, gemma-train launch).
  // transformers' default ddp_timeout until the recipe gives its own.
  const std::unique_ptr<ProcessGroup> group =
      connect_process_group(read_launch_environment(), std::chrono::seconds(1800));
  if (group->world_size() > 1 && !flags.has("threads")) {
    // The machine's cores shared among the ranks it runs.
    const auto cores = static_cast<int>(std::thread::hardware_concurrency());
    torch::set_num_threads(std::max(1, cores / group->local_world_size()));
  }
  if (group->world_size() == 1) {
    // The recipe and its overrides are read and checked in full (trainer/recipe.h): a bad key or
    // value is an error here, before anything else happens.
    const Recipe recipe = recipe_of(flags);
    if (flags.has("print-config")) {
      std::cout << print_recipe(recipe);
      return 0;
    }
    return run_training(recipe, *group);
  }
  // Several ranks. Until they agree that each is ready (the run's first collective), a rank's
  // error is shown once, by the lowest rank that has one, and every rank exits 2. After that an
  // error on one rank ends them all (there is no point where the others would hear of it).
  try {
    const Recipe recipe = recipe_of(flags);
    if (flags.has("print-config")) {
      agree_ranks_ready(*group, "");
      if (group->is_main()) std::cout << print_recipe(recipe);
      return 0;
    }
    return run_training(recipe, *group);
  } catch (const PeerRankFailed&) {
    return 2;
  } catch (const std::exception& e) {
    const bool input_error = dynamic_cast<const InputError*>(&e) != nullptr;
    if (!group->started()) {
      // Throws on every rank: InputError("[rank r] ...") on the lowest failed one, which the
      // command table prints, PeerRankFailed on the others.
      try {
        agree_ranks_ready(*group, e.what());
      } catch (const PeerRankFailed&) {
        return 2;
      }
    }
    const std::string text = e.what();
    const std::string prefix = rank_prefix(*group);
    std::cerr << "gemma-train: error: " << (text.rfind(prefix, 0) == 0 ? "" : prefix) << text
              << "\n";
    group->abort(input_error ? 2 : 1);
  }
}

}  // namespace gemma
