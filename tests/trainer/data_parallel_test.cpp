// The pieces of data parallelism that need no second process: which rows are a rank's, how the
// ranks' metrics and gradients merge (over a fake group that plays the other rank), and what the
// launchers' environment variables say.
#include "trainer/data_parallel.h"

#include <map>
#include <optional>
#include <set>

#include <gtest/gtest.h>

#include "io/input_error.h"
#include "trainer/launch_environment.h"

namespace gemma {
namespace {

// Rank 0 of two; the other rank's contributions are fixed in advance.
class TwoRankGroup : public ProcessGroup {
 public:
  std::string other_bytes;
  torch::Tensor other_tensor;  // added by all_reduce_sum
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  int local_rank() const override { return 0; }
  int local_world_size() const override { return 2; }
  std::string backend() const override { return "fake"; }
  void all_reduce_sum(torch::Tensor& tensor) override { tensor.add_(other_tensor); }
  void broadcast(torch::Tensor& /*tensor*/, int /*root*/) override {}
  std::vector<std::string> all_gather(const std::string& bytes) override {
    return {bytes, other_bytes};
  }
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
  bool started() const override { return true; }
};

// An objective with no data: only its derived metric matters here (a KTO-like margin).
class MarginObjective : public TrainingObjective {
 public:
  int64_t size(Split /*split*/) const override { return 0; }
  int64_t loss_units(const std::vector<int64_t>& /*indices*/, Split /*split*/) const override {
    return 0;
  }
  MicroBatchResult run(Gemma4ForCausalLM& /*model*/, const std::vector<int64_t>& /*indices*/,
                       Split /*split*/, double /*normalizer*/, bool /*backward*/) override {
    return {};
  }
  void add_derived_metrics(std::map<std::string, double>& values) const override {
    if (values.count("rewards/chosen") != 0 && values.count("rewards/rejected") != 0)
      values["rewards/margins"] = values["rewards/chosen"] - values["rewards/rejected"];
  }
};

TEST(RankRows, FullBatchesAreConsecutiveBlocksAndTheShortLastOneIsSplitEvenly) {
  const std::vector<int64_t> rows = {9, 3, 7, 1, 5, 0, 2, 8};
  EXPECT_EQ(rank_rows(rows, 0, 2, 4), (std::vector<int64_t>{9, 3, 7, 1}));
  EXPECT_EQ(rank_rows(rows, 1, 2, 4), (std::vector<int64_t>{5, 0, 2, 8}));
  const std::vector<int64_t> last = {4, 6, 11};  // 3 of 2 x 4
  EXPECT_EQ(rank_rows(last, 0, 2, 4), (std::vector<int64_t>{4}));
  EXPECT_EQ(rank_rows(last, 1, 2, 4), (std::vector<int64_t>{6, 11}));
  // Disjoint and covering for every world size and batch.
  for (int world = 1; world <= 5; ++world) {
    for (int64_t n = 0; n <= int64_t{3} * world; ++n) {
      std::vector<int64_t> batch(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) batch[static_cast<size_t>(i)] = 100 + i;
      std::vector<int64_t> seen;
      for (int r = 0; r < world; ++r)
        for (const int64_t row : rank_rows(batch, r, world, 3)) seen.push_back(row);
      EXPECT_EQ(seen, batch) << world << " ranks, " << n << " rows";
    }
  }
}

TEST(MergeRankMetrics, SumsAndCountsAddAsTrlGathersThem) {
  // The other rank: 30 label tokens with 3 correct, 4 chosen rows; its bytes as it sends them.
  const WindowMetrics theirs = {{{"mean_token_accuracy", {3, 30}}, {"rewards/chosen", {2.0, 4}}}};
  struct Recorder : TwoRankGroup {
    std::string sent;
    std::vector<std::string> all_gather(const std::string& bytes) override {
      sent = bytes;
      return {bytes};
    }
  } recorder;
  const MarginObjective objective;
  (void)merge_rank_metrics(recorder, objective, theirs);
  TwoRankGroup group;
  group.other_bytes = recorder.sent;

  const WindowMetrics mine = {{{"mean_token_accuracy", {1, 10}},
                               {"rewards/chosen", {1.0, 1}},
                               {"rewards/rejected", {-1.0, 0, true}},
                               {"logps/rejected", {0.0, 0, true}}}};
  const std::vector<std::map<std::string, double>> merged =
      merge_rank_metrics(group, objective, mine);
  ASSERT_EQ(merged.size(), 1u);
  EXPECT_DOUBLE_EQ(merged[0].at("mean_token_accuracy"), 4.0 / 40.0);  // not (0.1 + 0.1) / 2
  EXPECT_DOUBLE_EQ(merged[0].at("rewards/chosen"), 3.0 / 5.0);
  EXPECT_EQ(merged[0].count("rewards/rejected"), 0u);  // counted on no rank: not logged
  EXPECT_EQ(merged[0].count("logps/rejected"), 0u);
  EXPECT_EQ(merged[0].count("rewards/margins"), 0u);  // derived only from what was logged
  const auto both = merge_rank_metrics(
      group, objective, {{{"rewards/chosen", {1.0, 1}}, {"rewards/rejected", {-3.0, 2, true}}}});
  EXPECT_DOUBLE_EQ(both[0].at("rewards/margins"), 3.0 / 5.0 - (-3.0 / 2.0));
}

TEST(MergeRankMetrics, AMetricOfNothingIsZeroUnlessItNeedsACount) {
  const std::unique_ptr<ProcessGroup> single = single_process_group();
  const MarginObjective objective;
  const auto merged =
      merge_rank_metrics(*single, objective, {{{"entropy", {0, 0}}, {"kl", {0.5, 1}}}});
  EXPECT_EQ(merged[0].at("entropy"), 0.0);
  EXPECT_EQ(merged[0].at("kl"), 0.5);
}

TEST(AllReduceGradients, SumsEveryGradientAndCountsAMissingOneAsZeros) {
  TwoRankGroup group;
  torch::manual_seed(3);
  torch::Tensor a = torch::randn({3, 5}).requires_grad_();
  torch::Tensor b = torch::randn({7}).requires_grad_();
  a.mutable_grad() = torch::randn({3, 5});
  const torch::Tensor a_grad = a.grad().clone();
  // The other rank's flat bucket: [a's 15 values, b's 7].
  group.other_tensor = torch::randn({22});
  const NamedTensors params = {{"a", a}, {"b", b}};
  all_reduce_gradients(group, params);
  EXPECT_TRUE(torch::allclose(a.grad(), a_grad + group.other_tensor.narrow(0, 0, 15).view({3, 5})));
  ASSERT_TRUE(b.grad().defined());
  EXPECT_TRUE(torch::equal(b.grad(), group.other_tensor.narrow(0, 15, 7)));
}

LaunchEnvironment from(const std::map<std::string, std::string>& vars) {
  return read_launch_environment([&](const std::string& name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  });
}

TEST(LaunchEnvironment, ReadsEachLaunchersVariables) {
  EXPECT_EQ(from({}).launcher, Launcher::kNone);
  const LaunchEnvironment ompi = from({{"OMPI_COMM_WORLD_RANK", "3"},
                                       {"OMPI_COMM_WORLD_SIZE", "4"},
                                       {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}});
  EXPECT_EQ(ompi.launcher, Launcher::kMpi);
  EXPECT_EQ(ompi.rank, 3);
  EXPECT_EQ(ompi.world_size, 4);
  EXPECT_EQ(ompi.local_rank, 1);
  const LaunchEnvironment srun = from({{"PMIX_RANK", "2"}, {"SLURM_LOCALID", "0"}});
  EXPECT_EQ(srun.launcher, Launcher::kMpi);
  EXPECT_EQ(srun.rank, 2);
  EXPECT_EQ(srun.local_rank, 0);
  const LaunchEnvironment torchrun = from({{"RANK", "1"},
                                           {"WORLD_SIZE", "2"},
                                           {"LOCAL_RANK", "1"},
                                           {"MASTER_ADDR", "10.0.0.1"},
                                           {"MASTER_PORT", "29500"}});
  EXPECT_EQ(torchrun.launcher, Launcher::kTorchrun);
  EXPECT_EQ(torchrun.world_size, 2);
  EXPECT_EQ(torchrun.master_addr, "10.0.0.1");
  EXPECT_EQ(torchrun.master_port, 29500);
}

TEST(LaunchEnvironment, ABadVariableIsAnErrorNamingIt) {
  const auto message = [](const std::map<std::string, std::string>& vars) {
    try {
      from(vars);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{"RANK", "abc"}, {"WORLD_SIZE", "2"}}).find("RANK=\"abc\""),
            std::string::npos);
  EXPECT_NE(message({{"RANK", "0"}, {"WORLD_SIZE", "0"}}).find("WORLD_SIZE"), std::string::npos);
  EXPECT_NE(message({{"RANK", "2"}, {"WORLD_SIZE", "2"}}).find("not below"), std::string::npos);
  EXPECT_NE(message({{"RANK", "0"}, {"WORLD_SIZE", "2"}}).find("MASTER_ADDR"), std::string::npos);
  EXPECT_NE(
      message({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}})
          .find("MASTER_PORT"),
      std::string::npos);
  EXPECT_NE(message({{"OMPI_COMM_WORLD_RANK", "99999999999"}}).find("OMPI_COMM_WORLD_RANK"),
            std::string::npos);
}

}  // namespace
}  // namespace gemma
