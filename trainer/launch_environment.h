// Who started this process and as which rank: an MPI launcher (mpirun/mpiexec of Open MPI or
// MPICH, Slurm's srun --mpi=pmix), a torchrun-style launcher (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT), or nobody (one process, no MPI needed). Read from the environment
// only; the MPI library itself is initialised later, and only when an MPI launcher was found.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace gemma {

enum class Launcher { kNone, kMpi, kTorchrun };

struct LaunchEnvironment {
  Launcher launcher = Launcher::kNone;
  // What the launcher's variables say; for MPI the library's own answer replaces them once it is
  // initialised (the rank and size from MPI_COMM_WORLD, the local rank from a shared-memory split).
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr;  // torchrun-style only
  int master_port = 0;
  std::string source;  // the variables read, for messages: "OMPI_COMM_WORLD_RANK", "RANK", ...
};

// Reads the launch from `getenv` (the process environment by default). An InputError names the
// variable when one is set to something that is not a rank (RANK=abc, WORLD_SIZE=0, RANK >=
// WORLD_SIZE, MASTER_PORT out of range).
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
LaunchEnvironment read_launch_environment(const EnvLookup& getenv);
LaunchEnvironment read_launch_environment();

}  // namespace gemma
