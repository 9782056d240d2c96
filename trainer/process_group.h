// The ranks of a data-parallel run and the few collectives the loop needs: a sum over ranks
// (gradients, token counts), a broadcast (the starting adapter), an all-gather of bytes (metrics,
// RNG states, each rank's error) and a barrier. Backed by MPI for CPU tensors and NCCL for CUDA
// tensors (its communicator bootstrapped over MPI); a single process needs neither. Every
// collective is timed: one that waits longer than the timeout for the other ranks (a rank died,
// or hangs) ends this process with a message naming the rank, so no launch waits forever.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "trainer/launch_environment.h"

namespace gemma {

// What the collectives cost so far (for the benchmark and the run's log).
struct CollectiveStats {
  int64_t all_reduce_calls = 0;
  int64_t all_reduce_bytes = 0;  // payload summed over calls (each rank sends and receives it)
  double all_reduce_seconds = 0;
};

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual int local_rank() const = 0;
  virtual int local_world_size() const = 0;  // the ranks on this machine
  // "single", "mpi" or "mpi+nccl" (once a CUDA tensor has been reduced).
  virtual std::string backend() const = 0;

  // In place: every element becomes its sum over the ranks. A contiguous float32, float64 or
  // int64 tensor, on the CPU (MPI) or a CUDA device (NCCL).
  virtual void all_reduce_sum(torch::Tensor& tensor) = 0;
  // In place: every rank's tensor becomes `root`'s.
  virtual void broadcast(torch::Tensor& tensor, int root) = 0;
  // Every rank's bytes, by rank.
  virtual std::vector<std::string> all_gather(const std::string& bytes) = 0;
  virtual void barrier() = 0;
  // Ends every rank's process with `exit_code` (after an error past the point where the ranks
  // could agree to stop).
  [[noreturn]] virtual void abort(int exit_code) = 0;
  // Whether any collective has run yet (the first one is where the ranks agree that each is ready).
  virtual bool started() const = 0;
  // The longest a collective may wait for the other ranks (the recipe's training.ddp_timeout).
  virtual void set_timeout(std::chrono::seconds /*timeout*/) {}

  bool is_main() const { return rank() == 0; }
  const CollectiveStats& stats() const { return stats_; }

 protected:
  CollectiveStats stats_;
};

// World size 1: every collective is the identity.
std::unique_ptr<ProcessGroup> single_process_group();

// The process group of this launch: single for Launcher::kNone (or a world of 1), MPI for an MPI
// launcher. A torchrun-style launch of more than one process is an InputError saying how to
// launch over MPI. `timeout` bounds each collective's wait.
std::unique_ptr<ProcessGroup> connect_process_group(const LaunchEnvironment& env,
                                                    std::chrono::seconds timeout);

// Thrown on the ranks that were ready when another rank was not: that rank prints the reason.
class PeerRankFailed : public std::runtime_error {
 public:
  explicit PeerRankFailed(int failed_rank)
      : std::runtime_error("rank " + std::to_string(failed_rank) + " failed"),
        failed_rank_(failed_rank) {}
  int failed_rank() const { return failed_rank_; }

 private:
  int failed_rank_;
};

// Every rank calls this at the same point with its error ("" when it is ready). When all are
// ready it returns; otherwise the lowest failed rank throws InputError("[rank r] <its error>")
// and every other rank throws PeerRankFailed, so the launch prints one message and every rank
// exits non-zero, without an abort. Also the first collective of a run.
void agree_ranks_ready(ProcessGroup& group, const std::string& error);

// "[rank r] " in a world of more than one, "" otherwise: the prefix of a rank's messages.
std::string rank_prefix(const ProcessGroup& group);

}  // namespace gemma
