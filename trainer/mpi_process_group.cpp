#include "trainer/mpi_process_group.h"

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <mpi.h>

#ifdef GEMMA_WITH_CUDA
#include <cuda_runtime.h>
#include <nccl.h>
#endif

#include "io/input_error.h"

namespace gemma {
namespace {

using Clock = std::chrono::steady_clock;

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, static_cast<size_t>(length));
}

// Ends the process when a collective waits longer than the timeout: the other ranks are gone or
// stuck, and MPI has no deadline of its own. It writes with write(2) and leaves with _exit: the
// main thread is inside MPI, so nothing that takes a lock may run.
class CollectiveWatchdog {
 public:
  CollectiveWatchdog(int rank, std::chrono::seconds timeout)
      : rank_(rank), timeout_seconds_(timeout.count()) {
    thread_ = std::thread([this] { watch(); });
  }
  ~CollectiveWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;
  void set_timeout(std::chrono::seconds timeout) { timeout_seconds_.store(timeout.count()); }

  // RAII: the collective `what` is waiting from construction to destruction.
  class Scope {
   public:
    Scope(CollectiveWatchdog& w, const char* what) : w_(w) {
      w_.what_.store(what);
      w_.since_.store(Clock::now().time_since_epoch().count());
      w_.busy_.store(true);
    }
    ~Scope() { w_.busy_.store(false); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    CollectiveWatchdog& w_;
  };

 private:
  void watch() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      wake_.wait_for(lock, std::chrono::milliseconds(200));
      if (stop_ || !busy_.load()) continue;
      const Clock::time_point since{Clock::duration(since_.load())};
      const long long timeout = timeout_seconds_.load();
      if (Clock::now() - since < std::chrono::seconds(timeout)) continue;
      char message[512];
      const int n = std::snprintf(message, sizeof message,
                                  "gemma-train: error: [rank %d] %s waited %lld s for the other "
                                  "ranks (training.ddp_timeout): "
                                  "a rank has died or hangs; stopping\n",
                                  rank_, what_.load(), timeout);
      if (n > 0) {
        const ssize_t written = ::write(2, message, static_cast<size_t>(n));
        (void)written;
      }
      _exit(1);
    }
  }

  int rank_;
  std::atomic<long long> timeout_seconds_;
  std::atomic<bool> busy_{false};
  std::atomic<const char*> what_{""};
  std::atomic<Clock::rep> since_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

MPI_Datatype mpi_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return MPI_FLOAT;
    case torch::kFloat64:
      return MPI_DOUBLE;
    case torch::kInt64:
      return MPI_INT64_T;
    default:
      TORCH_CHECK(false, "all_reduce_sum: a ", t.scalar_type(), " tensor; expected f32, f64, i64");
  }
  return MPI_DATATYPE_NULL;
}

#ifdef GEMMA_WITH_CUDA
ncclDataType_t nccl_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return ncclFloat32;
    case torch::kFloat64:
      return ncclFloat64;
    case torch::kInt64:
      return ncclInt64;
    default:
      TORCH_CHECK(false, "all_reduce_sum: a ", t.scalar_type(), " tensor; expected f32, f64, i64");
  }
  return ncclFloat32;
}
#endif

class MpiProcessGroup : public ProcessGroup {
 public:
  MpiProcessGroup(const LaunchEnvironment& env, std::chrono::seconds timeout) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      // The watchdog thread never calls MPI: FUNNELED is enough.
      const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      if (rc != MPI_SUCCESS)
        throw InputError("MPI_Init_thread failed (" + mpi_error_text(rc) + ") in a launch by " +
                         env.source);
      owns_mpi_ = true;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size_);
    // The local rank: this rank's place among the ranks that share its node's memory.
    MPI_Comm local = MPI_COMM_NULL;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    if (local != MPI_COMM_NULL) {
      MPI_Comm_rank(local, &local_rank_);
      MPI_Comm_size(local, &local_world_size_);
      MPI_Comm_free(&local);
    } else {
      local_rank_ = env.local_rank;
    }
    watchdog_ = std::make_unique<CollectiveWatchdog>(rank_, timeout);
  }

  ~MpiProcessGroup() override {
    watchdog_.reset();
#ifdef GEMMA_WITH_CUDA
    if (nccl_ != nullptr) ncclCommDestroy(nccl_);
#endif
    if (owns_mpi_) {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    }
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  int local_rank() const override { return local_rank_; }
  int local_world_size() const override { return local_world_size_; }
  std::string backend() const override {
#ifdef GEMMA_WITH_CUDA
    if (nccl_ != nullptr) return "mpi+nccl";
#endif
    return "mpi";
  }
  bool started() const override { return started_; }
  void set_timeout(std::chrono::seconds timeout) override { watchdog_->set_timeout(timeout); }

  void all_reduce_sum(torch::Tensor& tensor) override {
    TORCH_CHECK(tensor.is_contiguous(), "all_reduce_sum: a non-contiguous tensor");
    started_ = true;
    const auto start = Clock::now();
    if (tensor.is_cuda()) {
      all_reduce_cuda(tensor);
    } else {
      CollectiveWatchdog::Scope scope(*watchdog_, "an all-reduce");
      check(MPI_Allreduce(MPI_IN_PLACE, tensor.data_ptr(), static_cast<int>(tensor.numel()),
                          mpi_type(tensor), MPI_SUM, MPI_COMM_WORLD),
            "MPI_Allreduce");
    }
    stats_.all_reduce_calls += 1;
    stats_.all_reduce_bytes += static_cast<int64_t>(tensor.nbytes());
    stats_.all_reduce_seconds += std::chrono::duration<double>(Clock::now() - start).count();
  }

  void broadcast(torch::Tensor& tensor, int root) override {
    TORCH_CHECK(tensor.is_contiguous(), "broadcast: a non-contiguous tensor");
    started_ = true;
    torch::Tensor host = tensor.is_cuda() ? tensor.cpu() : tensor;
    {
      CollectiveWatchdog::Scope scope(*watchdog_, "a broadcast");
      check(MPI_Bcast(host.data_ptr(), static_cast<int>(host.nbytes()), MPI_BYTE, root,
                      MPI_COMM_WORLD),
            "MPI_Bcast");
    }
    if (tensor.is_cuda()) tensor.copy_(host);
  }

  std::vector<std::string> all_gather(const std::string& bytes) override {
    started_ = true;
    CollectiveWatchdog::Scope scope(*watchdog_, "an all-gather");
    const auto n = static_cast<int>(world_size_);
    std::vector<int> sizes(static_cast<size_t>(n));
    const int mine = static_cast<int>(bytes.size());
    check(MPI_Allgather(&mine, 1, MPI_INT, sizes.data(), 1, MPI_INT, MPI_COMM_WORLD),
          "MPI_Allgather");
    std::vector<int> offsets(static_cast<size_t>(n));
    int total = 0;
    for (int r = 0; r < n; ++r) {
      offsets[static_cast<size_t>(r)] = total;
      total += sizes[static_cast<size_t>(r)];
    }
    std::string all(static_cast<size_t>(total), '\0');
    check(MPI_Allgatherv(bytes.data(), mine, MPI_BYTE, all.data(), sizes.data(), offsets.data(),
                         MPI_BYTE, MPI_COMM_WORLD),
          "MPI_Allgatherv");
    std::vector<std::string> out;
    out.reserve(static_cast<size_t>(n));
    for (int r = 0; r < n; ++r)
      out.push_back(all.substr(static_cast<size_t>(offsets[static_cast<size_t>(r)]),
                               static_cast<size_t>(sizes[static_cast<size_t>(r)])));
    return out;
  }

  void barrier() override {
    started_ = true;
    CollectiveWatchdog::Scope scope(*watchdog_, "a barrier");
    check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  }

  [[noreturn]] void abort(int exit_code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    _exit(exit_code);
  }

 private:
  void check(int rc, const char* call) const {
    if (rc != MPI_SUCCESS)
      throw std::runtime_error("[rank " + std::to_string(rank_) + "] " + call +
                               " failed: " + mpi_error_text(rc));
  }

  void all_reduce_cuda(torch::Tensor& tensor) {
#ifdef GEMMA_WITH_CUDA
    if (nccl_ == nullptr) {
      // NCCL's communicator, bootstrapped over MPI: rank 0's unique id to every rank.
      ncclUniqueId id;
      if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
      {
        CollectiveWatchdog::Scope scope(*watchdog_, "the NCCL bootstrap");
        check(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
      }
      check_cuda(cudaSetDevice(tensor.get_device()), "cudaSetDevice");
      check_nccl(ncclCommInitRank(&nccl_, world_size_, id, rank_), "ncclCommInitRank");
    }
    CollectiveWatchdog::Scope scope(*watchdog_, "an NCCL all-reduce");
    // On the legacy default stream, where LibTorch queued the gradients' kernels; then wait, as
    // the caller reads the result next.
    check_nccl(
        ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                      nccl_type(tensor), ncclSum, nccl_, nullptr),
        "ncclAllReduce");
    check_cuda(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize");
#else
    TORCH_CHECK(false, "all_reduce_sum: a CUDA tensor, but gemma-train was built without CUDA");
#endif
  }

#ifdef GEMMA_WITH_CUDA
  void check_nccl(ncclResult_t rc, const char* call) const {
    if (rc != ncclSuccess)
      throw std::runtime_error("[rank " + std::to_string(rank_) + "] " + call +
                               " failed: " + ncclGetErrorString(rc));
  }
  void check_cuda(cudaError_t rc, const char* call) const {
    if (rc != cudaSuccess)
      throw std::runtime_error("[rank " + std::to_string(rank_) + "] " + call +
                               " failed: " + cudaGetErrorString(rc));
  }
  ncclComm_t nccl_ = nullptr;
#endif

  int rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_world_size_ = 1;
  bool owns_mpi_ = false;
  bool started_ = false;
  std::unique_ptr<CollectiveWatchdog> watchdog_;
};

}  // namespace

std::unique_ptr<ProcessGroup> mpi_process_group(const LaunchEnvironment& env,
                                                std::chrono::seconds timeout) {
  return std::make_unique<MpiProcessGroup>(env, timeout);
}

}  // namespace gemma
