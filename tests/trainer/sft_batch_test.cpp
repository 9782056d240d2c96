// SFT collation (TRL's DataCollatorForLanguageModeling, padded and padding-free) and the summed
// chunked loss with TRL's token metrics against plain full-logit computations.
#include <gtest/gtest.h>

#include "trainer/chunked_cross_entropy.h"
#include "trainer/sft_batch.h"

namespace gemma {
namespace {

SftExample example(std::vector<int32_t> ids, std::vector<uint8_t> mask,
                   std::vector<int32_t> lengths = {}) {
  SftExample e;
  e.input_ids = std::move(ids);
  e.labels_mask = std::move(mask);
  e.seq_lengths = lengths.empty() ? std::vector<int32_t>{static_cast<int32_t>(e.input_ids.size())}
                                  : std::move(lengths);
  return e;
}

TEST(SftBatch, PadsOnTheRightWithMaskedLabels) {
  const SftExample a = example({2, 10, 11, 12}, {1, 0, 1, 1});
  const SftExample b = example({2, 20}, {1, 1});
  const SftBatch batch = collate_sft({&a, &b}, 0, false);
  EXPECT_TRUE(torch::equal(batch.input_ids, torch::tensor({{2, 10, 11, 12}, {2, 20, 0, 0}})));
  EXPECT_TRUE(torch::equal(batch.attention_mask, torch::tensor({{1, 1, 1, 1}, {1, 1, 0, 0}})));
  EXPECT_TRUE(torch::equal(batch.labels, torch::tensor({{2, -100, 11, 12}, {2, 20, -100, -100}})));
  EXPECT_FALSE(batch.position_ids.defined());
  EXPECT_EQ(batch.num_tokens, 6);
  EXPECT_EQ(batch.loss_tokens, 3);  // labels[:, 1:]: 11, 12 and 20
  EXPECT_EQ(sft_loss_tokens(a) + sft_loss_tokens(b), batch.loss_tokens);
}

TEST(SftBatch, PaddingFreeIsOneRowWithRestartingPositions) {
  const SftExample packed = example({2, 10, 11, 2, 20}, {0, 1, 1, 0, 1}, {3, 2});
  const SftExample single = example({2, 30, 31}, {1, 1, 1});
  const SftBatch batch = collate_sft({&packed, &single}, 0, true);
  EXPECT_TRUE(torch::equal(batch.input_ids, torch::tensor({{2, 10, 11, 2, 20, 2, 30, 31}})));
  EXPECT_TRUE(torch::equal(batch.position_ids, torch::tensor({{0, 1, 2, 0, 1, 0, 1, 2}})));
  // -100 at every position 0: no document predicts its first token from the one before.
  EXPECT_TRUE(torch::equal(batch.labels, torch::tensor({{-100, 10, 11, -100, 20, -100, 30, 31}})));
  EXPECT_FALSE(batch.attention_mask.defined());
  EXPECT_EQ(batch.num_tokens, 8);
  EXPECT_EQ(batch.loss_tokens, 5);
  EXPECT_EQ(sft_loss_tokens(packed) + sft_loss_tokens(single), batch.loss_tokens);
}

TEST(ChunkedLossSum, EqualsTheFullLogitSumAndItsTokenMetrics) {
  torch::manual_seed(3);
  const int64_t n = 37, h = 16, v = 50;
  const torch::Tensor hidden = torch::randn({n, h}, torch::kFloat64).requires_grad_();
  const torch::Tensor head = torch::randn({v, h}, torch::kFloat64).requires_grad_();
  torch::Tensor labels = torch::randint(v, {n}, torch::kInt64);
  {
    // A third of the labels are the head's own argmax, so accuracy is not trivially 0.
    torch::NoGradGuard no_grad;
    const torch::Tensor top = torch::matmul(hidden, head.t()).argmax(1);
    labels.index_put_({torch::indexing::Slice(0, n, 3)},
                      top.index({torch::indexing::Slice(0, n, 3)}));
  }
  labels.index_put_({torch::indexing::Slice(1, n, 4)}, kIgnoreIndex);
  TokenStats stats;
  const torch::Tensor sum = chunked_causal_lm_loss_sum(hidden, head, labels, 30.0, 8, &stats);
  sum.backward();
  const torch::Tensor gh = hidden.grad().clone(), gw = head.grad().clone();
  hidden.mutable_grad().reset();
  head.mutable_grad().reset();

  const torch::Tensor logits = torch::tanh(torch::matmul(hidden, head.t()) / 30.0) * 30.0;
  const torch::Tensor counted = labels != kIgnoreIndex;
  const torch::Tensor logp = logits.log_softmax(1);
  const torch::Tensor ref =
      -(logp.gather(1, labels.clamp_min(0).unsqueeze(1)).squeeze(1) * counted).sum();
  ref.backward();
  EXPECT_NEAR(sum.item<double>(), ref.item<double>(), 1e-9);
  EXPECT_TRUE(torch::allclose(gh, hidden.grad(), 1e-9, 1e-10));
  EXPECT_TRUE(torch::allclose(gw, head.grad(), 1e-9, 1e-10));
  EXPECT_EQ(stats.count, counted.sum().item<int64_t>());
  EXPECT_EQ(stats.correct, ((logits.argmax(1) == labels) & counted).sum().item<int64_t>());
  const torch::Tensor entropy = -(logp.exp() * logp).sum(1);
  EXPECT_NEAR(stats.entropy_sum, (entropy * counted).sum().item<double>(), 1e-9);
}

}  // namespace
}  // namespace gemma
