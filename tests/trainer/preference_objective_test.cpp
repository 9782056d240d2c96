// The DPO and KTO objectives on a small random model against the same quantities computed in one
// piece here (full log_softmax, adapters switched by hand), the reference model's two forms, and
// the memory of the reference pass: it holds no second copy of the weights.
#include <gtest/gtest.h>

#include "peft/lora_adapters.h"
#include "tests/model/test_models.h"
#include "trainer/chunked_cross_entropy.h"
#include "trainer/dpo_objective.h"
#include "trainer/kto_objective.h"
#include "trainer/memory_meter.h"
#include "trainer/preference_batch.h"
#include "trainer/reference_model.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::random_model;

Gemma4ForCausalLM adapted_model(uint64_t seed) {
  Gemma4ForCausalLM model = random_model(bundled_config("tiny-e2b"), seed);
  AdapterSpec spec;
  spec.lora.r = 4;
  spec.lora.alpha = 8;
  spec.lora.init_lora_weights = false;  // B random: the policy is not the base
  spec.seed = seed + 1;
  attach_adapters(model, spec);
  return model;
}

std::vector<int32_t> ids(std::initializer_list<int32_t> list) { return list; }

std::vector<int64_t> values(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

std::vector<PreferenceExample> pairs() {
  std::vector<PreferenceExample> out(3);
  out[0] = {ids({2, 17, 33, 5}), ids({40, 41, 1}), ids({50, 1}), 0, "t:1"};
  out[1] = {ids({2, 9}), ids({60, 61, 62, 63, 1}), ids({70, 71, 1}), 0, "t:2"};
  out[2] = {ids({2, 100, 101, 102, 103, 104}), ids({7, 1}), ids({8, 9, 10, 1}), 0, "t:3"};
  return out;
}

// Σ log p over each row's completion, [N], computed in one piece.
torch::Tensor reference_logps(Gemma4ForCausalLM& model, const SequenceBatch& batch) {
  torch::NoGradGuard no_grad;
  Gemma4Input in;
  in.input_ids = batch.input_ids;
  in.attention_mask = batch.attention_mask;
  const torch::Tensor hidden = model->model->forward(in);
  const int64_t t = hidden.size(1);
  return sequence_logprobs_reference(hidden.narrow(1, 0, t - 1), model->lm_head_weight(),
                                     batch.labels.narrow(1, 1, t - 1),
                                     model->config().final_logit_softcapping)
      .sum;
}

TEST(PreferenceBatch, ChosenRowsOverRejectedRowsTruncatedAndMasked) {
  const std::vector<PreferenceExample> p = pairs();
  const SequenceBatch b =
      collate_preference({&p[0], &p[1]}, /*pad_id=*/0, /*max_length=*/6, SftTruncation::kKeepStart);
  ASSERT_EQ(b.input_ids.sizes(), (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(values(b.input_ids[0]), (std::vector<int64_t>{2, 17, 33, 5, 40, 41}));
  EXPECT_EQ(b.labels[0][3].item<int64_t>(), kIgnoreIndex);
  EXPECT_EQ(b.labels[0][4].item<int64_t>(), 40);
  EXPECT_EQ(values(b.completion_tokens),
            (std::vector<int64_t>{2, 4, 2, 3}));  // cut to 6: 2 of 3, 4 of 5
  EXPECT_EQ(b.attention_mask[3].sum().item<int64_t>(), 5);
  EXPECT_EQ(b.num_tokens, 6 + 6 + 6 + 5);
  const SequenceBatch end =
      collate_preference({&p[0]}, 0, 4, SftTruncation::kKeepEnd);  // keeps the last tokens
  EXPECT_EQ(values(end.input_ids[0]), (std::vector<int64_t>{5, 40, 41, 1}));
  EXPECT_EQ(end.completion_tokens[0].item<int64_t>(), 3);
}

TEST(DpoObjective, LossAndRewardsEqualTheOnePieceComputation) {
  Gemma4ForCausalLM model = adapted_model(11);
  model->eval();
  DpoObjectiveOptions o;
  o.loss.beta = 0.2;
  DpoObjective objective(pairs(), {}, o, ReferenceModel());
  const MicroBatchResult r = objective.run(model, {0, 1, 2}, Split::kTrain, 1.0, false);

  const std::vector<PreferenceExample> p = pairs();
  const SequenceBatch batch =
      collate_preference({&p[0], &p[1], &p[2]}, 0, 1024, SftTruncation::kKeepStart);
  const torch::Tensor policy = reference_logps(model, batch);
  torch::Tensor base;
  {
    const AdaptersDisabled off(model);
    base = reference_logps(model, batch);
  }
  const torch::Tensor chosen = policy.narrow(0, 0, 3) - base.narrow(0, 0, 3);
  const torch::Tensor rejected = policy.narrow(0, 3, 3) - base.narrow(0, 3, 3);
  ASSERT_GT((chosen - rejected).abs().max().item<double>(), 1e-4);  // policy != reference
  const double loss = (-torch::log_sigmoid(0.2 * (chosen - rejected))).mean().item<double>();
  EXPECT_NEAR(r.loss, loss, 1e-5 * std::abs(loss));
  EXPECT_NEAR(r.metrics.at("rewards/chosen").value(), (0.2 * chosen).mean().item<double>(), 1e-5);
  EXPECT_NEAR(r.metrics.at("rewards/margins").value(),
              (0.2 * (chosen - rejected)).mean().item<double>(), 1e-5);
  EXPECT_NEAR(r.metrics.at("logps/rejected").value(), policy.narrow(0, 3, 3).mean().item<double>(),
              1e-4);
  EXPECT_EQ(r.num_tokens, batch.num_tokens);

  // Precomputed reference values give the same loss.
  const std::vector<ReferenceLogps> cached =
      objective.compute_reference_logps(model, Split::kTrain, 2);
  ASSERT_EQ(cached.size(), 3u);
  EXPECT_NEAR(cached[1].rejected, base[4].item<double>(), 1e-4);
  objective.use_reference_logps(Split::kTrain, cached);
  EXPECT_NEAR(objective.run(model, {0, 1, 2}, Split::kTrain, 1.0, false).loss, r.loss, 1e-5);
}

TEST(KtoObjective, LossWithTheKlTermEqualsTheOnePieceComputation) {
  Gemma4ForCausalLM model = adapted_model(12);
  model->eval();
  std::vector<KtoExample> rows(4);
  rows[0] = {ids({2, 17, 33}), ids({40, 41, 1}), {}, true, 0, "t:1"};
  rows[1] = {ids({2, 9}), ids({60, 61, 1}), {}, false, 0, "t:2"};
  rows[2] = {ids({2, 100, 101}), ids({7, 1}), {}, true, 0, "t:3"};
  rows[3] = {ids({2, 5}), ids({8, 9, 10, 1}), {}, false, 0, "t:4"};
  rotate_kl_completions(&rows, 4);
  KtoObjectiveOptions o;
  o.loss.beta = 0.3;
  o.loss.undesirable_weight = 1.5;
  KtoObjective objective(rows, {}, o, ReferenceModel());
  const MicroBatchResult r = objective.run(model, {0, 1, 2, 3}, Split::kTrain, 1.0, false);

  std::vector<PromptCompletion> matched, mismatched;
  for (const KtoExample& e : rows) {
    matched.push_back({&e.prompt_ids, &e.completion_ids});
    mismatched.push_back({&e.prompt_ids, &e.kl_completion_ids});
  }
  const SequenceBatch m = collate_sequences(matched, 0, 1024, SftTruncation::kKeepStart);
  const SequenceBatch k = collate_sequences(mismatched, 0, 1024, SftTruncation::kKeepStart);
  const torch::Tensor policy = reference_logps(model, m), policy_kl = reference_logps(model, k);
  torch::Tensor base, base_kl;
  {
    const AdaptersDisabled off(model);
    base = reference_logps(model, m);
    base_kl = reference_logps(model, k);
  }
  const double kl = std::max(0.0, (policy_kl - base_kl).mean().item<double>());
  const torch::Tensor ratio = policy - base;
  double sum = 0;
  for (int i = 0; i < 4; ++i) {
    const double x = ratio[i].item<double>();
    sum += rows[static_cast<size_t>(i)].label
               ? 1.0 - 1.0 / (1.0 + std::exp(-0.3 * (x - kl)))
               : 1.5 * (1.0 - 1.0 / (1.0 + std::exp(-0.3 * (kl - x))));
  }
  EXPECT_NEAR(r.loss, sum / 4, 1e-5);
  EXPECT_NEAR(r.metrics.at("kl").value(), kl, 1e-5);
  EXPECT_NEAR(r.metrics.at("rewards/chosen").value(),
              0.3 * (ratio[0].item<double>() + ratio[2].item<double>()) / 2, 1e-5);
  EXPECT_EQ(r.metrics.count("rewards/accuracies"), 0u);  // not a KTO metric in TRL
}

TEST(ReferenceModel, FrozenAdapterIsTheStartingAdapterAndTheTrainedOneComesBack) {
  Gemma4ForCausalLM model = adapted_model(13);
  model->eval();
  const std::vector<PreferenceExample> p = pairs();
  const SequenceBatch batch = collate_preference({&p[0]}, 0, 1024, SftTruncation::kKeepStart);
  const torch::Tensor start = reference_logps(model, batch);
  const ReferenceModel frozen = ReferenceModel::frozen_adapter(model);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : trainable_parameters(model)) t.add_(torch::randn_like(t) * 0.1);
  }
  const torch::Tensor trained = reference_logps(model, batch);
  ASSERT_GT((trained - start).abs().max().item<double>(), 1e-4);
  const torch::Tensor ref = frozen.run(model, [&] { return reference_logps(model, batch); });
  EXPECT_LT((ref - start).abs().max().item<double>(), 1e-5);
  EXPECT_LT((reference_logps(model, batch) - trained).abs().max().item<double>(), 1e-6);
  EXPECT_THROW(frozen.run(model, []() -> torch::Tensor { throw std::runtime_error("x"); }),
               std::runtime_error);
  EXPECT_LT((reference_logps(model, batch) - trained).abs().max().item<double>(), 1e-6);
}

// The reference forward (adapters off) allocates what the policy's forward without gradients
// does, and no more: the base is held once, never copied for the reference.
TEST(ReferenceModel, ReferencePassAllocatesNoSecondCopyOfTheWeights) {
  CountingCpuAllocator& counter = CountingCpuAllocator::install();
  Gemma4ForCausalLM model = adapted_model(14);
  model->eval();
  int64_t weight_bytes = 0;
  for (const auto& t : model->parameters()) weight_bytes += t.nbytes();
  const std::vector<PreferenceExample> p = pairs();
  const SequenceBatch batch =
      collate_preference({&p[0], &p[1]}, 0, 1024, SftTruncation::kKeepStart);
  const auto peak_of = [&](const std::function<void()>& f) {
    const int64_t before = counter.live_bytes();
    counter.reset_peak();
    f();
    return counter.peak_bytes() - before;
  };
  const int64_t policy = peak_of([&] { reference_logps(model, batch); });
  const int64_t base =
      peak_of([&] { ReferenceModel().run(model, [&] { return reference_logps(model, batch); }); });
  EXPECT_LE(base, policy + (int64_t{64} << 10));
  EXPECT_LT(base, weight_bytes / 2) << "the reference pass held a copy of the weights";
  // The frozen adapter keeps a copy of the adapter tensors only.
  int64_t adapter_bytes = 0;
  for (const auto& [name, t] : trainable_parameters(model)) adapter_bytes += t.nbytes();
  const int64_t before = counter.live_bytes();
  const ReferenceModel frozen = ReferenceModel::frozen_adapter(model);
  EXPECT_LE(counter.live_bytes() - before, adapter_bytes + (int64_t{4} << 10));
  const int64_t swapped =
      peak_of([&] { frozen.run(model, [&] { return reference_logps(model, batch); }); });
  EXPECT_LE(swapped, policy + adapter_bytes + (int64_t{64} << 10));
}

}  // namespace
}  // namespace gemma
