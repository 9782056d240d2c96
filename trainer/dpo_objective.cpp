#include "trainer/dpo_objective.h"

#include <utility>

#include "trainer/chunked_cross_entropy.h"
#include "trainer/preference_batch.h"

namespace gemma {
namespace {

size_t slot(Split split) { return split == Split::kTrain ? 0 : 1; }

// Σ over the masked tokens and their count (TRL's guarded averages: 0 when there are none).
MetricSum masked_sum(const torch::Tensor& values, const torch::Tensor& mask) {
  return {(values * mask).sum().item<double>(), mask.sum().item<double>()};
}

// Σ over the rows and their count (TRL's gather(...).mean()).
MetricSum row_sum(const torch::Tensor& values) {
  return {values.sum().item<double>(), static_cast<double>(values.numel())};
}

// The model's forward as the head needs it: hidden[:, :-1] predicts labels[:, 1:].
struct ShiftedForward {
  torch::Tensor token_logps;  // [N, T-1]
  torch::Tensor mask;         // [N, T-1] float: the label counts
  TokenDetails details;
};

ShiftedForward forward_logps(Gemma4ForCausalLM& model, const SequenceBatch& batch,
                             int64_t chunk_tokens, bool details) {
  const torch::Device device = model->device();
  Gemma4Input input;
  input.input_ids = batch.input_ids.to(device);
  input.attention_mask = batch.attention_mask.to(device);
  const torch::Tensor hidden = model->model->forward(input);
  const int64_t t = hidden.size(1);
  const torch::Tensor labels = batch.labels.narrow(1, 1, t - 1).to(device);
  ShiftedForward out;
  out.token_logps = chunked_token_logprobs(hidden.narrow(1, 0, t - 1), model->lm_head_weight(),
                                           labels, model->config().final_logit_softcapping,
                                           chunk_tokens, details ? &out.details : nullptr);
  out.mask = (labels != kIgnoreIndex).to(out.token_logps.scalar_type());
  return out;
}

}  // namespace

DpoObjective::DpoObjective(std::vector<PreferenceExample> train,
                           std::vector<PreferenceExample> eval, DpoObjectiveOptions options,
                           ReferenceModel reference)
    : train_(std::move(train)),
      eval_(std::move(eval)),
      options_(std::move(options)),
      reference_(std::move(reference)) {}

const std::vector<PreferenceExample>& DpoObjective::examples(Split split) const {
  return split == Split::kTrain ? train_ : eval_;
}

int64_t DpoObjective::size(Split split) const {
  return static_cast<int64_t>(examples(split).size());
}

int64_t DpoObjective::loss_units(const std::vector<int64_t>& /*indices*/, Split /*split*/) const {
  return 1;
}

torch::Tensor DpoObjective::sequence_logps(const torch::Tensor& token_logps,
                                           const torch::Tensor& mask) const {
  if (!options_.ld_alpha) return token_logps.sum(1);
  // LD-DPO: the first min(|y_w|, |y_l|) completion tokens count fully, the rest by α.
  const torch::Tensor position = mask.cumsum(1);
  const torch::Tensor lengths = mask.sum(1);
  const int64_t b = lengths.size(0) / 2;
  const torch::Tensor shared_half =
      torch::minimum(lengths.narrow(0, 0, b), lengths.narrow(0, b, b));
  const torch::Tensor shared = torch::cat({shared_half, shared_half}).unsqueeze(1);
  const torch::Tensor shared_mask = (position > 0) & (position <= shared);
  const torch::Tensor tail_mask = position > shared;
  return (token_logps * shared_mask).sum(1) + *options_.ld_alpha * (token_logps * tail_mask).sum(1);
}

std::vector<ReferenceLogps> DpoObjective::compute_reference_logps(
    Gemma4ForCausalLM& model, Split split, int64_t batch_size,
    const std::function<void(int64_t, int64_t)>& progress) {
  const std::vector<PreferenceExample>& all = examples(split);
  std::vector<ReferenceLogps> out;
  out.reserve(all.size());
  const auto n = static_cast<int64_t>(all.size());
  for (int64_t begin = 0; begin < n; begin += batch_size) {
    std::vector<const PreferenceExample*> rows;
    for (int64_t i = begin; i < std::min(n, begin + batch_size); ++i)
      rows.push_back(&all[static_cast<size_t>(i)]);
    const SequenceBatch batch =
        collate_preference(rows, options_.pad_id, options_.max_length, options_.truncation);
    const torch::Tensor logps = reference_
                                    .run(model,
                                         [&] {
                                           const ShiftedForward f = forward_logps(
                                               model, batch, options_.chunk_tokens, false);
                                           return sequence_logps(f.token_logps, f.mask);
                                         })
                                    .to(torch::kCPU, torch::kFloat64);
    const auto b = static_cast<int64_t>(rows.size());
    for (int64_t i = 0; i < b; ++i)
      out.push_back({logps[i].item<double>(), logps[b + i].item<double>()});
    if (progress) progress(std::min(n, begin + batch_size), n);
  }
  return out;
}

void DpoObjective::use_reference_logps(Split split, std::vector<ReferenceLogps> logps) {
  TORCH_CHECK(logps.size() == examples(split).size(), "use_reference_logps: ", logps.size(),
              " values for ", examples(split).size(), " examples");
  precomputed_[slot(split)] = std::move(logps);
}

MicroBatchResult DpoObjective::run(Gemma4ForCausalLM& model, const std::vector<int64_t>& indices,
                                   Split split, double normalizer, bool backward) {
  std::vector<const PreferenceExample*> rows;
  rows.reserve(indices.size());
  for (const int64_t i : indices) rows.push_back(&examples(split)[static_cast<size_t>(i)]);
  const SequenceBatch batch =
      collate_preference(rows, options_.pad_id, options_.max_length, options_.truncation);
  const auto b = static_cast<int64_t>(rows.size());

  // The reference first: a frozen adapter is swapped in place, which must not happen between
  // the policy's forward and its backward (without dropout the order changes nothing).
  torch::Tensor ref_logps;
  const std::vector<ReferenceLogps>& cached = precomputed_[slot(split)];
  if (!cached.empty()) {
    std::vector<double> values(static_cast<size_t>(2 * b));
    for (int64_t i = 0; i < b; ++i) {
      const ReferenceLogps& r = cached[static_cast<size_t>(indices[static_cast<size_t>(i)])];
      values[static_cast<size_t>(i)] = r.chosen;
      values[static_cast<size_t>(b + i)] = r.rejected;
    }
    ref_logps = torch::tensor(values, torch::kFloat64);
  } else {
    ref_logps = reference_.run(model, [&] {
      const ShiftedForward f = forward_logps(model, batch, options_.chunk_tokens, false);
      return sequence_logps(f.token_logps, f.mask);
    });
  }

  std::optional<torch::NoGradGuard> no_grad;
  if (!backward) no_grad.emplace();
  const ShiftedForward policy = forward_logps(model, batch, options_.chunk_tokens, true);
  const torch::Tensor logps = sequence_logps(policy.token_logps, policy.mask);
  const torch::Tensor& mask = policy.mask;
  const torch::ScalarType dtype = logps.scalar_type();
  ref_logps = ref_logps.to(logps.device(), dtype);

  DpoPairLogps pairs;
  pairs.chosen = logps.narrow(0, 0, b);
  pairs.rejected = logps.narrow(0, b, b);
  pairs.ref_chosen = ref_logps.narrow(0, 0, b);
  pairs.ref_rejected = ref_logps.narrow(0, b, b);
  const torch::Tensor completion = batch.completion_tokens.to(logps.device(), dtype);
  pairs.chosen_tokens = completion.narrow(0, 0, b);
  pairs.rejected_tokens = completion.narrow(0, b, b);
  const torch::Tensor chosen_mask = mask.narrow(0, 0, b);
  // TRL: the mean of -log p over the chosen completion tokens (NaN when there are none).
  pairs.sft_loss = -(policy.token_logps.narrow(0, 0, b) * chosen_mask).sum() / chosen_mask.sum();
  if (options_.use_weighting) {
    // WPO: w = exp(mean over the completion of log p − log Σ_v p_v²), without gradient.
    const torch::Tensor aligned =
        ((policy.token_logps.detach() - policy.details.log_sum_sq_probs) * mask).sum(1) /
        mask.sum(1).clamp_min(1);
    const torch::Tensor w = aligned.exp();
    pairs.weights = w.narrow(0, 0, b) * w.narrow(0, b, b);
  }
  const torch::Tensor loss = dpo_loss(pairs, options_.loss) / normalizer;
  if (backward) loss.backward();

  MicroBatchResult result;
  result.loss = loss.item<double>();
  result.num_tokens = batch.num_tokens;
  torch::NoGradGuard metrics_only;
  const double beta = options_.loss.beta;
  const torch::Tensor chosen_rewards = beta * (pairs.chosen.detach() - pairs.ref_chosen);
  const torch::Tensor rejected_rewards = beta * (pairs.rejected.detach() - pairs.ref_rejected);
  const torch::Tensor rejected_mask = mask.narrow(0, b, b);
  const TokenDetails& d = policy.details;
  result.metrics = {
      {"entropy", masked_sum(d.entropy, mask)},
      {"logits/chosen", masked_sum(d.mean_logit.narrow(0, 0, b), chosen_mask)},
      {"logits/rejected", masked_sum(d.mean_logit.narrow(0, b, b), rejected_mask)},
      {"mean_token_accuracy",
       masked_sum(d.is_top1.narrow(0, 0, b).to(mask.scalar_type()), chosen_mask)},
      {"rewards/chosen", row_sum(chosen_rewards)},
      {"rewards/rejected", row_sum(rejected_rewards)},
      {"rewards/accuracies", row_sum((chosen_rewards > rejected_rewards).to(dtype))},
      {"rewards/margins", row_sum(chosen_rewards - rejected_rewards)},
      {"logps/chosen", row_sum(pairs.chosen.detach())},
      {"logps/rejected", row_sum(pairs.rejected.detach())},
  };
  return result;
}

}  // namespace gemma
