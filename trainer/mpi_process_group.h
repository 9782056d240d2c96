// The ranks of an MPI launch (mpirun, mpiexec, srun --mpi=pmix): MPI for CPU tensors, NCCL for
// CUDA tensors where gemma-train was built with CUDA. MPI is initialised here, only for an MPI
// launch, and finalised when the group is destroyed.
#pragma once

#include <chrono>
#include <memory>

#include "trainer/launch_environment.h"
#include "trainer/process_group.h"

namespace gemma {

std::unique_ptr<ProcessGroup> mpi_process_group(const LaunchEnvironment& env,
                                                std::chrono::seconds timeout);

}  // namespace gemma
