#include "trainer/kto_objective.h"

#include <utility>

#include "trainer/chunked_cross_entropy.h"
#include "trainer/preference_batch.h"

namespace gemma {
namespace {

size_t slot(Split split) { return split == Split::kTrain ? 0 : 1; }

struct Batches {
  SequenceBatch completions;  // prompt + completion
  SequenceBatch kl;           // prompt + the KL pair's completion (only when the loss uses it)
};

Batches collate(const std::vector<const KtoExample*>& rows, const KtoObjectiveOptions& o,
                bool with_kl) {
  std::vector<PromptCompletion> completions, kl;
  for (const KtoExample* e : rows) {
    completions.push_back({&e->prompt_ids, &e->completion_ids});
    kl.push_back({&e->prompt_ids, &e->kl_completion_ids});
  }
  Batches b;
  b.completions = collate_sequences(completions, o.pad_id, o.max_length, SftTruncation::kKeepStart);
  if (with_kl) b.kl = collate_sequences(kl, o.pad_id, o.max_length, SftTruncation::kKeepStart);
  return b;
}

// Per-token log-probs [N, T-1] of the batch's labels and their mask, as the model computes now.
torch::Tensor token_logps(Gemma4ForCausalLM& model, const SequenceBatch& batch, int64_t chunk,
                          torch::Tensor* mask, TokenDetails* details) {
  const torch::Device device = model->device();
  Gemma4Input input;
  input.input_ids = batch.input_ids.to(device);
  input.attention_mask = batch.attention_mask.to(device);
  const torch::Tensor hidden = model->model->forward(input);
  const int64_t t = hidden.size(1);
  const torch::Tensor labels = batch.labels.narrow(1, 1, t - 1).to(device);
  torch::Tensor out =
      chunked_token_logprobs(hidden.narrow(1, 0, t - 1), model->lm_head_weight(), labels,
                             model->config().final_logit_softcapping, chunk, details);
  if (mask != nullptr) *mask = (labels != kIgnoreIndex).to(out.scalar_type());
  return out;
}

torch::Tensor summed_logps(Gemma4ForCausalLM& model, const SequenceBatch& batch, int64_t chunk) {
  return token_logps(model, batch, chunk, nullptr, nullptr).sum(1);
}

}  // namespace

KtoObjective::KtoObjective(std::vector<KtoExample> train, std::vector<KtoExample> eval,
                           KtoObjectiveOptions options, ReferenceModel reference)
    : train_(std::move(train)),
      eval_(std::move(eval)),
      options_(options),
      reference_(std::move(reference)) {}

const std::vector<KtoExample>& KtoObjective::examples(Split split) const {
  return split == Split::kTrain ? train_ : eval_;
}

int64_t KtoObjective::size(Split split) const {
  return static_cast<int64_t>(examples(split).size());
}

int64_t KtoObjective::loss_units(const std::vector<int64_t>& /*indices*/, Split /*split*/) const {
  return 1;
}

std::vector<KtoReferenceLogps> KtoObjective::compute_reference_logps(
    Gemma4ForCausalLM& model, Split split, int64_t batch_size,
    const std::function<void(int64_t, int64_t)>& progress) {
  const std::vector<KtoExample>& all = examples(split);
  std::vector<KtoReferenceLogps> out;
  out.reserve(all.size());
  const auto n = static_cast<int64_t>(all.size());
  for (int64_t begin = 0; begin < n; begin += batch_size) {
    std::vector<const KtoExample*> rows;
    for (int64_t i = begin; i < std::min(n, begin + batch_size); ++i)
      rows.push_back(&all[static_cast<size_t>(i)]);
    const Batches b = collate(rows, options_, uses_kl());
    const torch::Tensor both = reference_.run(model, [&] {
      torch::Tensor completion = summed_logps(model, b.completions, options_.chunk_tokens);
      torch::Tensor kl = uses_kl() ? summed_logps(model, b.kl, options_.chunk_tokens)
                                   : torch::zeros_like(completion);
      return torch::stack({completion, kl}).to(torch::kCPU, torch::kFloat64);
    });
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto j = static_cast<int64_t>(i);
      out.push_back({both[0][j].item<double>(), both[1][j].item<double>()});
    }
    if (progress) progress(std::min(n, begin + batch_size), n);
  }
  return out;
}

void KtoObjective::use_reference_logps(Split split, std::vector<KtoReferenceLogps> logps) {
  TORCH_CHECK(logps.size() == examples(split).size(), "use_reference_logps: ", logps.size(),
              " values for ", examples(split).size(), " examples");
  precomputed_[slot(split)] = std::move(logps);
}

MicroBatchResult KtoObjective::run(Gemma4ForCausalLM& model, const std::vector<int64_t>& indices,
                                   Split split, double normalizer, bool backward) {
  if (indices.empty()) {
    // A rank without rows of this micro-batch still takes part in the KL's mean over ranks.
    TORCH_CHECK(reduces_across_ranks(), "KtoObjective::run: no rows");
    torch::Tensor none = torch::zeros({2}, torch::kFloat64);
    group_->all_reduce_sum(none);
    return {};
  }
  std::vector<const KtoExample*> rows;
  std::vector<uint8_t> labels;
  for (const int64_t i : indices) {
    rows.push_back(&examples(split)[static_cast<size_t>(i)]);
    labels.push_back(rows.back()->label ? 1 : 0);
  }
  const Batches b = collate(rows, options_, uses_kl());

  // The reference first: a frozen adapter is swapped in place, which must not happen between
  // the policy's forward and its backward (without dropout the order changes nothing).
  torch::Tensor ref_logps, ref_kl_logps;
  const std::vector<KtoReferenceLogps>& cached = precomputed_[slot(split)];
  if (!cached.empty()) {
    std::vector<double> completion, kl;
    for (const int64_t i : indices) {
      completion.push_back(cached[static_cast<size_t>(i)].completion);
      kl.push_back(cached[static_cast<size_t>(i)].kl);
    }
    ref_logps = torch::tensor(completion, torch::kFloat64);
    ref_kl_logps = torch::tensor(kl, torch::kFloat64);
  } else {
    const torch::Tensor both = reference_.run(model, [&] {
      torch::Tensor completion = summed_logps(model, b.completions, options_.chunk_tokens);
      torch::Tensor kl = uses_kl() ? summed_logps(model, b.kl, options_.chunk_tokens)
                                   : torch::zeros_like(completion);
      return torch::stack({completion, kl});
    });
    ref_logps = both[0];
    ref_kl_logps = both[1];
  }

  std::optional<torch::NoGradGuard> no_grad;
  if (!backward) no_grad.emplace();
  torch::Tensor kl_logps;
  if (uses_kl()) {
    torch::NoGradGuard kl_no_grad;  // TRL: the policy's KL pairs carry no gradient
    kl_logps = summed_logps(model, b.kl, options_.chunk_tokens);
  }
  torch::Tensor mask;
  TokenDetails details;
  const torch::Tensor logps =
      token_logps(model, b.completions, options_.chunk_tokens, &mask, &details).sum(1);
  const torch::ScalarType dtype = logps.scalar_type();
  ref_logps = ref_logps.to(logps.device(), dtype);
  ref_kl_logps = ref_kl_logps.to(logps.device(), dtype);
  torch::Tensor kl = torch::zeros({}, logps.options());
  if (uses_kl()) {
    torch::Tensor mean = kto_kl_mean(kl_logps, ref_kl_logps);
    if (reduces_across_ranks()) {
      // TRL: gather_for_metrics(kl).mean(): the mean of the ranks' means.
      torch::Tensor sum_count =
          torch::stack({mean.to(torch::kCPU, torch::kFloat64), torch::ones({}, torch::kFloat64)});
      group_->all_reduce_sum(sum_count);
      mean = (sum_count[0] / sum_count[1]).to(logps.device(), dtype);
    }
    kl = kto_clamped_kl(mean);
  }
  const torch::Tensor desirable =
      torch::tensor(std::vector<int64_t>(labels.begin(), labels.end()), torch::kInt64)
          .to(logps.device())
          .to(torch::kBool);
  const torch::Tensor loss =
      kto_loss({logps, ref_logps, desirable}, kl, options_.loss) / normalizer;
  if (backward) loss.backward();

  MicroBatchResult result;
  result.loss = loss.item<double>();
  result.num_tokens = b.completions.num_tokens;
  torch::NoGradGuard metrics_only;
  const double beta = options_.loss.beta;
  const torch::Tensor rewards = beta * (logps.detach() - ref_logps);
  const torch::Tensor& chosen = desirable;
  const torch::Tensor rejected = desirable.logical_not();
  const double n_chosen = chosen.sum().item<double>();
  const double n_rejected = rejected.sum().item<double>();
  // The same KL on every rank: its mean over the ranks is itself.
  result.metrics["kl"] = {kl.item<double>(), 1};
  result.metrics["entropy"] = {(details.entropy * mask).sum().item<double>(),
                               mask.sum().item<double>()};
  const torch::Tensor row_mask_chosen = mask * chosen.unsqueeze(1).to(mask.scalar_type());
  const torch::Tensor row_mask_rejected = mask * rejected.unsqueeze(1).to(mask.scalar_type());
  const double chosen_tokens = row_mask_chosen.sum().item<double>();
  const double rejected_tokens = row_mask_rejected.sum().item<double>();
  // TRL logs these only where some rank has such tokens or rows (a metric whose count stays 0
  // after the ranks merge is left out).
  result.metrics["logits/chosen"] = {(details.mean_logit * row_mask_chosen).sum().item<double>(),
                                     chosen_tokens, true};
  result.metrics["logits/rejected"] = {
      (details.mean_logit * row_mask_rejected).sum().item<double>(), rejected_tokens, true};
  result.metrics["rewards/chosen"] = {rewards.masked_select(chosen).nansum().item<double>(),
                                      n_chosen, true};
  result.metrics["logps/chosen"] = {logps.detach().masked_select(chosen).nansum().item<double>(),
                                    n_chosen, true};
  result.metrics["rewards/rejected"] = {rewards.masked_select(rejected).nansum().item<double>(),
                                        n_rejected, true};
  result.metrics["logps/rejected"] = {
      logps.detach().masked_select(rejected).nansum().item<double>(), n_rejected, true};
  return result;
}

void KtoObjective::add_derived_metrics(std::map<std::string, double>& values) const {
  const auto chosen = values.find("rewards/chosen");
  const auto rejected = values.find("rewards/rejected");
  if (chosen != values.end() && rejected != values.end())
    values["rewards/margins"] = chosen->second - rejected->second;
}

}  // namespace gemma
