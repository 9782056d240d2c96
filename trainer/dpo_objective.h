// DPO as an objective of the one training loop (trl 1.16 DPOTrainer._compute_loss,
// qlora-formats.md §4.2): per micro-batch of B pairs one forward over the 2B sequences (chosen
// rows, then rejected rows), per-token log-probs from the chunked head (never [T, vocab] in f32),
// summed over each completion (or LD-DPO's shared part + α·tail); the reference's from the same
// model as ReferenceModel says, or precomputed; the loss of dpo_loss.h and TRL's metrics.
#pragma once

#include <functional>
#include <optional>
#include <vector>

#include "data/preference_dataset.h"
#include "trainer/dpo_loss.h"
#include "trainer/reference_model.h"
#include "trainer/training_objective.h"

namespace gemma {

struct DpoObjectiveOptions {
  DpoLossOptions loss;
  bool use_weighting = false;      // WPO
  std::optional<double> ld_alpha;  // LD-DPO
  std::optional<int64_t> max_length;
  SftTruncation truncation = SftTruncation::kKeepStart;
  int64_t pad_id = 0;
  int64_t chunk_tokens = 1024;
};

// The reference's summed log-probs of one pair's completions.
struct ReferenceLogps {
  double chosen = 0;
  double rejected = 0;
};

class DpoObjective : public TrainingObjective {
 public:
  DpoObjective(std::vector<PreferenceExample> train, std::vector<PreferenceExample> eval,
               DpoObjectiveOptions options, ReferenceModel reference);
  int64_t size(Split split) const override;
  // 1 per micro-batch: DPO's loss is a mean over its pairs, and the Trainer divides it by the
  // number of micro-batches in the accumulation window.
  int64_t loss_units(const std::vector<int64_t>& indices, Split split) const override;
  MicroBatchResult run(Gemma4ForCausalLM& model, const std::vector<int64_t>& indices, Split split,
                       double normalizer, bool backward) override;

  // The reference over every example of `split` in order, `batch_size` pairs per forward
  // (precompute_ref_log_probs); `progress(done, total)` after each batch.
  std::vector<ReferenceLogps> compute_reference_logps(
      Gemma4ForCausalLM& model, Split split, int64_t batch_size,
      const std::function<void(int64_t, int64_t)>& progress = {});
  // From now on the reference values of `split` come from `logps` (one per example).
  void use_reference_logps(Split split, std::vector<ReferenceLogps> logps);

  const std::vector<PreferenceExample>& examples(Split split) const;

 private:
  // Summed (or LD-weighted) completion log-probs [2B] of `model` on `batch` as it computes now.
  torch::Tensor sequence_logps(const torch::Tensor& token_logps, const torch::Tensor& mask) const;

  std::vector<PreferenceExample> train_, eval_;
  DpoObjectiveOptions options_;
  ReferenceModel reference_;
  std::vector<ReferenceLogps> precomputed_[2];
};

}  // namespace gemma
