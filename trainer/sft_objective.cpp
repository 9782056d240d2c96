#include "trainer/sft_objective.h"

#include <algorithm>
#include <utility>

#include "trainer/sft_batch.h"

namespace gemma {

SftObjective::SftObjective(std::vector<SftExample> train, std::vector<SftExample> eval,
                           int64_t pad_id, bool padding_free, int64_t chunk_tokens)
    : train_(std::move(train)),
      eval_(std::move(eval)),
      pad_id_(pad_id),
      padding_free_(padding_free),
      chunk_tokens_(chunk_tokens) {}

const std::vector<SftExample>& SftObjective::examples(Split split) const {
  return split == Split::kTrain ? train_ : eval_;
}

int64_t SftObjective::size(Split split) const {
  return static_cast<int64_t>(examples(split).size());
}

int64_t SftObjective::loss_units(const std::vector<int64_t>& indices, Split split) const {
  int64_t n = 0;
  for (const int64_t i : indices) n += sft_loss_tokens(examples(split)[static_cast<size_t>(i)]);
  return n;
}

MicroBatchResult SftObjective::run(Gemma4ForCausalLM& model, const std::vector<int64_t>& indices,
                                   Split split, double normalizer, bool backward) {
  std::vector<const SftExample*> rows;
  rows.reserve(indices.size());
  for (const int64_t i : indices) rows.push_back(&examples(split)[static_cast<size_t>(i)]);
  const SftBatch batch = collate_sft(rows, pad_id_, padding_free_);
  const torch::Device device = model->device();
  Gemma4Input input;
  input.input_ids = batch.input_ids.to(device);
  if (batch.attention_mask.defined()) input.attention_mask = batch.attention_mask.to(device);
  if (batch.position_ids.defined()) input.position_ids = batch.position_ids.to(device);

  std::optional<torch::NoGradGuard> no_grad;
  if (!backward) no_grad.emplace();
  const torch::Tensor hidden = model->model->forward(input);
  const int64_t b = hidden.size(0), t = hidden.size(1), h = hidden.size(2);
  // hidden[:, :-1] predicts labels[:, 1:]
  const torch::Tensor shifted_hidden = hidden.narrow(1, 0, t - 1).reshape({b * (t - 1), h});
  const torch::Tensor shifted_labels = batch.labels.narrow(1, 1, t - 1).reshape({-1}).to(device);
  MicroBatchResult result;
  TokenStats stats;
  const torch::Tensor sum =
      chunked_causal_lm_loss_sum(shifted_hidden, model->lm_head_weight(), shifted_labels,
                                 model->config().final_logit_softcapping, chunk_tokens_, &stats);
  const torch::Tensor loss = sum / normalizer;
  if (backward) loss.backward();
  result.loss = loss.item<double>();
  result.num_tokens = batch.num_tokens;
  const auto count = static_cast<double>(stats.count);
  result.metrics = {{"entropy", {stats.entropy_sum, count}},
                    {"mean_token_accuracy", {static_cast<double>(stats.correct), count}}};
  return result;
}

}  // namespace gemma
