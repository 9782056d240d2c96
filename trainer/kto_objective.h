// KTO as an objective of the one training loop (trl 1.16 KTOTrainer._compute_loss,
// qlora-formats.md §4.3): per micro-batch of N unpaired completions, the policy's summed
// completion log-probs (with gradient), the KL estimate's mismatched pairs under the policy
// without gradient, the same two under the reference (ReferenceModel, or precomputed), the loss
// of kto_loss.h and TRL's metrics (appended only where a micro-batch has rows of that label).
#pragma once

#include <functional>
#include <optional>
#include <vector>

#include "data/preference_dataset.h"
#include "trainer/kto_loss.h"
#include "trainer/reference_model.h"
#include "trainer/training_objective.h"

namespace gemma {

struct KtoObjectiveOptions {
  KtoLossOptions loss;
  std::optional<int64_t> max_length;
  int64_t pad_id = 0;
  int64_t chunk_tokens = 1024;
  bool sequential = true;  // train_sampling_strategy: sequential (TRL's default for KTO)
};

// The reference's summed log-probs of one row: its completion and its KL pair's.
struct KtoReferenceLogps {
  double completion = 0;
  double kl = 0;
};

class KtoObjective : public TrainingObjective {
 public:
  KtoObjective(std::vector<KtoExample> train, std::vector<KtoExample> eval,
               KtoObjectiveOptions options, ReferenceModel reference);
  int64_t size(Split split) const override;
  // 1 per micro-batch: the loss is a mean over its rows, divided by the window's micro-batches.
  int64_t loss_units(const std::vector<int64_t>& indices, Split split) const override;
  MicroBatchResult run(Gemma4ForCausalLM& model, const std::vector<int64_t>& indices, Split split,
                       double normalizer, bool backward) override;
  bool sequential() const override { return options_.sequential; }
  void set_process_group(ProcessGroup* group) override { group_ = group; }
  bool reduces_across_ranks() const override {
    return uses_kl() && group_ != nullptr && group_->world_size() > 1;
  }
  void add_derived_metrics(std::map<std::string, double>& values) const override;

  // Whether the loss has the KL term (kto; apo_zero_unpaired has none).
  bool uses_kl() const { return options_.loss.loss_type == KtoLossType::kKto; }

  std::vector<KtoReferenceLogps> compute_reference_logps(
      Gemma4ForCausalLM& model, Split split, int64_t batch_size,
      const std::function<void(int64_t, int64_t)>& progress = {});
  void use_reference_logps(Split split, std::vector<KtoReferenceLogps> logps);

  const std::vector<KtoExample>& examples(Split split) const;

 private:
  std::vector<KtoExample> train_, eval_;
  KtoObjectiveOptions options_;
  ReferenceModel reference_;
  std::vector<KtoReferenceLogps> precomputed_[2];
  ProcessGroup* group_ = nullptr;
};

}  // namespace gemma
