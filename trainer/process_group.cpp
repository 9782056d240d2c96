#include "trainer/process_group.h"

#include "io/input_error.h"
#include "trainer/mpi_process_group.h"

namespace gemma {
namespace {

class SingleProcessGroup : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_world_size() const override { return 1; }
  std::string backend() const override { return "single"; }
  void all_reduce_sum(torch::Tensor& /*tensor*/) override { started_ = true; }
  void broadcast(torch::Tensor& /*tensor*/, int /*root*/) override { started_ = true; }
  std::vector<std::string> all_gather(const std::string& bytes) override {
    started_ = true;
    return {bytes};
  }
  void barrier() override { started_ = true; }
  [[noreturn]] void abort(int exit_code) override { std::exit(exit_code); }
  bool started() const override { return started_; }

 private:
  bool started_ = false;
};

}  // namespace

std::unique_ptr<ProcessGroup> single_process_group() {
  return std::make_unique<SingleProcessGroup>();
}

std::unique_ptr<ProcessGroup> connect_process_group(const LaunchEnvironment& env,
                                                    std::chrono::seconds timeout) {
  switch (env.launcher) {
    case Launcher::kNone:
      return single_process_group();
    case Launcher::kMpi:
      return mpi_process_group(env, timeout);
    case Launcher::kTorchrun:
      if (env.world_size == 1) return single_process_group();
      throw InputError(
          "environment variables RANK/WORLD_SIZE=" + std::to_string(env.world_size) +
          " (a torchrun-style launch): gemma-train's ranks exchange gradients over MPI (NCCL "
          "on GPUs, bootstrapped over MPI); start them with `gemma-train launch --nproc " +
          std::to_string(env.world_size) + " -- ...`, mpirun, or srun --mpi=pmix");
  }
  return single_process_group();
}

void agree_ranks_ready(ProcessGroup& group, const std::string& error) {
  if (group.world_size() == 1) {
    group.barrier();
    if (!error.empty()) throw InputError(error);
    return;
  }
  const std::vector<std::string> errors = group.all_gather(error);
  for (int r = 0; r < static_cast<int>(errors.size()); ++r) {
    if (errors[static_cast<size_t>(r)].empty()) continue;
    if (r == group.rank()) throw InputError("[rank " + std::to_string(r) + "] " + error);
    throw PeerRankFailed(r);
  }
}

std::string rank_prefix(const ProcessGroup& group) {
  return group.world_size() > 1 ? "[rank " + std::to_string(group.rank()) + "] " : "";
}

}  // namespace gemma
