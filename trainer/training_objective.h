// What the training loop optimizes, apart from the loop (torchtune's recipe/loss split): an
// objective owns its prepared train and eval examples and maps (model, the examples of one
// micro-batch) to a loss and TRL's metrics: SFT, DPO and KTO.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/gemma4_model.h"
#include "trainer/chunked_cross_entropy.h"
#include "trainer/process_group.h"

namespace gemma {

enum class Split { kTrain, kEval };

// A metric of one micro-batch as a sum and what it is averaged over (tokens, rows, ranks), so
// that ranks merge by adding both, as TRL gathers the pieces before it divides.
struct MetricSum {
  double sum = 0;
  double count = 0;
  // Logged only when something was counted (KTO's rewards/chosen); otherwise 0 (TRL's guard).
  bool only_when_counted = false;
  double value() const { return count > 0 ? sum / count : 0; }
};
using MicroBatchMetrics = std::map<std::string, MetricSum>;

// One micro-batch's share of a step.
struct MicroBatchResult {
  double loss = 0;         // Σ per-unit loss / normalizer
  int64_t num_tokens = 0;  // TRL's num_tokens (attention-mask sum, or the row length)
  // The trainer's metrics of this micro-batch by TRL's names ("entropy", "rewards/chosen", ...):
  // TRL appends one value per micro-batch and logs the plain mean of them since the last log.
  MicroBatchMetrics metrics;
};

class TrainingObjective {
 public:
  virtual ~TrainingObjective() = default;
  virtual int64_t size(Split split) const = 0;
  // The units the loss averages over (SFT: label tokens) for the examples `indices`, known before
  // the forward pass, so a step divides by the whole accumulation window's count.
  virtual int64_t loss_units(const std::vector<int64_t>& indices, Split split) const = 0;
  // Forward (and backward when `backward`) of one micro-batch, its loss divided by `normalizer`.
  virtual MicroBatchResult run(Gemma4ForCausalLM& model, const std::vector<int64_t>& indices,
                               Split split, double normalizer, bool backward) = 0;
  // Whether the train examples are read in dataset order rather than shuffled per epoch (KTO's
  // train_sampling_strategy "sequential", its default: the KL pairs are fixed neighbours).
  virtual bool sequential() const { return false; }
  // The ranks of a data-parallel run, for an objective whose maths reduces across them (KTO's KL
  // estimate, as TRL gathers it). Such an objective's run() is then called on every rank for
  // every micro-batch, with no indices where a rank has no rows of it.
  virtual void set_process_group(ProcessGroup* group) { (void)group; }
  virtual bool reduces_across_ranks() const { return false; }
  // Metrics that follow from others once the ranks' sums are merged (KTO's rewards/margins).
  virtual void add_derived_metrics(std::map<std::string, double>& values) const { (void)values; }
};

}  // namespace gemma
