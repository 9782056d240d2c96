#include "trainer/launch_environment.h"

#include <cstdlib>

#include "io/input_error.h"

namespace gemma {
namespace {

// A non-negative decimal integer below `limit`, or an InputError naming the variable.
int env_int(const EnvLookup& getenv, const std::string& name, long long min, long long limit) {
  const std::string value = getenv(name).value_or("");
  long long n = 0;
  bool ok = !value.empty() && value.size() <= 9;
  for (const char c : value) {
    if (c < '0' || c > '9') ok = false;
    n = n * 10 + (c - '0');
  }
  if (!ok || n < min || n >= limit)
    throw InputError("environment variable " + name + "=\"" + value + "\": expected an integer " +
                     std::to_string(min) + ".." + std::to_string(limit - 1));
  return static_cast<int>(n);
}

bool has(const EnvLookup& getenv, const std::string& name) { return getenv(name).has_value(); }

}  // namespace

LaunchEnvironment read_launch_environment(const EnvLookup& getenv) {
  LaunchEnvironment env;
  constexpr long long kMaxRanks = 1 << 20;
  // MPI launchers, by the variables each sets in every process it starts: Open MPI's mpirun,
  // PMIx (Open MPI 5, Slurm's srun --mpi=pmix), MPICH's Hydra and Slurm's PMI-2.
  struct MpiVars {
    const char* rank;
    const char* size;
    const char* local_rank;
  };
  for (const MpiVars& v :
       {MpiVars{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
        MpiVars{"PMIX_RANK", "", "PMIX_LOCAL_RANK"},
        MpiVars{"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"}}) {
    if (!has(getenv, v.rank)) continue;
    env.launcher = Launcher::kMpi;
    env.source = v.rank;
    env.rank = env_int(getenv, v.rank, 0, kMaxRanks);
    env.world_size =
        has(getenv, v.size) && *v.size ? env_int(getenv, v.size, 1, kMaxRanks + 1) : env.rank + 1;
    if (has(getenv, v.local_rank)) {
      env.local_rank = env_int(getenv, v.local_rank, 0, kMaxRanks);
    } else if (has(getenv, "SLURM_LOCALID")) {
      env.local_rank = env_int(getenv, "SLURM_LOCALID", 0, kMaxRanks);
    }
    if (env.rank >= env.world_size)
      throw InputError(std::string("environment variable ") + v.rank + "=" +
                       std::to_string(env.rank) + " is not below the world size " +
                       std::to_string(env.world_size));
    return env;
  }
  // torchrun, accelerate launch, deepspeed: the PyTorch launchers' variables.
  if (has(getenv, "WORLD_SIZE") || has(getenv, "RANK")) {
    env.launcher = Launcher::kTorchrun;
    env.source = "RANK";
    env.world_size = env_int(getenv, "WORLD_SIZE", 1, kMaxRanks + 1);
    env.rank = env_int(getenv, "RANK", 0, kMaxRanks);
    env.local_rank =
        has(getenv, "LOCAL_RANK") ? env_int(getenv, "LOCAL_RANK", 0, kMaxRanks) : env.rank;
    if (env.rank >= env.world_size)
      throw InputError("environment variable RANK=" + std::to_string(env.rank) +
                       " is not below WORLD_SIZE=" + std::to_string(env.world_size));
    if (env.world_size > 1) {
      env.master_addr = getenv("MASTER_ADDR").value_or("");
      if (env.master_addr.empty())
        throw InputError("environment variable MASTER_ADDR: not set, and WORLD_SIZE=" +
                         std::to_string(env.world_size) + " needs the address of rank 0");
      env.master_port = env_int(getenv, "MASTER_PORT", 1, 65536);
    }
    return env;
  }
  return env;
}

LaunchEnvironment read_launch_environment() {
  return read_launch_environment([](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  });
}

}  // namespace gemma
