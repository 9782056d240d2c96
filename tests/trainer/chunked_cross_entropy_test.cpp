#include "trainer/chunked_cross_entropy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

namespace gemma {
namespace {

// The chunked loss and its gradients equal the one-piece loss (f64, several chunk sizes, with
// ignored tokens and with and without the softcap).
TEST(ChunkedCrossEntropy, EqualsUnchunkedLossAndGradients) {
  for (const std::optional<double> cap : {std::optional<double>(30.0), std::optional<double>()}) {
    for (int64_t chunk : {1, 7, 64, 1000}) {
      torch::manual_seed(chunk);
      const torch::Tensor h0 = torch::randn({37, 24}, torch::kFloat64) * 3;
      const torch::Tensor w0 = torch::randn({501, 24}, torch::kFloat64);
      torch::Tensor labels = torch::randint(0, 501, {37}, torch::kInt64);
      labels.narrow(0, 5, 4).fill_(kIgnoreIndex);
      torch::Tensor h1 = h0.clone().requires_grad_(), w1 = w0.clone().requires_grad_();
      torch::Tensor h2 = h0.clone().requires_grad_(), w2 = w0.clone().requires_grad_();
      const torch::Tensor a = chunked_causal_lm_loss(h1, w1, labels, cap, chunk);
      const torch::Tensor b = causal_lm_loss_reference(h2, w2, labels, cap);
      EXPECT_NEAR(a.item<double>(), b.item<double>(), 1e-12);
      a.backward();
      b.backward();
      EXPECT_TRUE(torch::allclose(h1.grad(), h2.grad(), 1e-10, 1e-12));
      EXPECT_TRUE(torch::allclose(w1.grad(), w2.grad(), 1e-10, 1e-12));
    }
  }
}

// With a frozen head (LoRA, QLoRA) the gradient is taken in the forward from the same logits
// (fused linear cross-entropy): the hidden gradient under a non-unit upstream gradient, the loss
// and the token statistics equal the one-piece loss and the recomputing path (f64, f32, bf16).
TEST(ChunkedCrossEntropy, FrozenHeadTakesItsGradientInTheForward) {
  for (const auto dtype : {torch::kFloat64, torch::kFloat32, torch::kBFloat16}) {
    for (const std::optional<double> cap : {std::optional<double>(30.0), std::optional<double>()}) {
      for (int64_t chunk : {1, 7, 1000}) {
        SCOPED_TRACE(std::string(c10::toString(dtype)) + " chunk " + std::to_string(chunk));
        torch::manual_seed(chunk + 10);
        const torch::Tensor h0 = (torch::randn({37, 24}, torch::kFloat64) * 3).to(dtype);
        const torch::Tensor w = torch::randn({501, 24}, torch::kFloat64).to(dtype);  // frozen
        torch::Tensor labels = torch::randint(0, 501, {37}, torch::kInt64);
        labels.narrow(0, 5, 4).fill_(kIgnoreIndex);
        torch::Tensor h1 = h0.clone().requires_grad_(), h2 = h0.clone().requires_grad_();
        torch::Tensor h3 = h0.clone().requires_grad_();
        TokenStats fused_stats, plain_stats;
        const torch::Tensor a = chunked_causal_lm_loss_sum(h1, w, labels, cap, chunk, &fused_stats);
        const torch::Tensor b =
            causal_lm_loss_reference(h2.to(torch::kFloat64), w.to(torch::kFloat64), labels, cap) *
            33.0;
        // the recomputing path: the head asks for a gradient too
        const torch::Tensor w3 = w.clone().requires_grad_();
        const torch::Tensor c =
            chunked_causal_lm_loss_sum(h3, w3, labels, cap, chunk, &plain_stats);
        const double tol = dtype == torch::kFloat64   ? 1e-10
                           : dtype == torch::kFloat32 ? 1e-4
                                                      : 5e-2;
        EXPECT_NEAR(a.item<double>(), b.item<double>(), tol * b.item<double>());
        EXPECT_NEAR(a.item<double>(), c.item<double>(), tol * b.item<double>());
        EXPECT_EQ(fused_stats.count, 33);
        EXPECT_EQ(fused_stats.count, plain_stats.count);
        EXPECT_EQ(fused_stats.correct, plain_stats.correct);
        EXPECT_NEAR(fused_stats.entropy_sum, plain_stats.entropy_sum,
                    1e-4 * std::abs(plain_stats.entropy_sum) + 1e-9);
        (a * 0.37).backward();
        (b * 0.37).backward();
        (c * 0.37).backward();
        EXPECT_EQ(h1.grad().scalar_type(), dtype);
        const torch::Tensor ref = h2.grad().to(torch::kFloat64);
        const double err = (h1.grad().to(torch::kFloat64) - ref).abs().max().item<double>() /
                           ref.abs().max().item<double>();
        EXPECT_LT(err, tol);
        const double err_plain = (h1.grad().to(torch::kFloat64) - h3.grad().to(torch::kFloat64))
                                     .abs()
                                     .max()
                                     .item<double>() /
                                 ref.abs().max().item<double>();
        EXPECT_LT(err_plain, tol);
        // the mean loss takes the same path
        torch::Tensor h4 = h0.clone().requires_grad_();
        chunked_causal_lm_loss(h4, w, labels, cap, chunk).backward();
        EXPECT_LT((h4.grad().to(torch::kFloat64) * 33.0 * 0.37 - h1.grad().to(torch::kFloat64))
                          .abs()
                          .max()
                          .item<double>() /
                      ref.abs().max().item<double>(),
                  tol);
      }
    }
  }
}

TEST(ChunkedCrossEntropy, Float32AndAllIgnored) {
  torch::manual_seed(1);
  const torch::Tensor h = torch::randn({10, 8}, torch::kFloat32).requires_grad_();
  const torch::Tensor w = torch::randn({50, 8}, torch::kFloat32).requires_grad_();
  const torch::Tensor labels = torch::randint(0, 50, {10}, torch::kInt64);
  EXPECT_NEAR(chunked_causal_lm_loss(h, w, labels, 30.0, 3).item<float>(),
              causal_lm_loss_reference(h, w, labels, 30.0).item<float>(), 1e-5);
  const torch::Tensor none = torch::full({10}, kIgnoreIndex, torch::kInt64);
  const torch::Tensor zero = chunked_causal_lm_loss(h, w, none, 30.0, 4);
  EXPECT_EQ(zero.item<float>(), 0.0f);
  zero.backward();
  EXPECT_EQ(h.grad().abs().sum().item<float>(), 0.0f);
}

// max |a - b| / max(max |b|, 1): relative for large values, absolute near zero.
double scaled_error(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(b.abs().max().item<double>(), 1.0);
}

// Labels [4, 9] over a vocabulary of `vocab` with a different number of counted tokens per row:
// a masked prompt, right padding, nothing counted at all, and scattered holes.
torch::Tensor masked_labels(int64_t vocab) {
  torch::Tensor labels = torch::randint(0, vocab, {4, 9}, torch::kInt64);
  labels[0].narrow(0, 0, 3).fill_(kIgnoreIndex);  // prompt
  labels[1].narrow(0, 5, 4).fill_(kIgnoreIndex);  // padding
  labels[2].fill_(kIgnoreIndex);                  // nothing counted
  labels[3][1] = kIgnoreIndex;
  labels[3][4] = kIgnoreIndex;
  labels[3][8] = kIgnoreIndex;
  return labels;
}

// The chunked per-sequence log-probabilities, and their gradients w.r.t. hidden and lm_head under
// a random upstream gradient, equal the one-piece log_softmax + gather (f64, with and without
// the softcap, chunks smaller than a row, not dividing B·T, and larger than B·T).
TEST(ChunkedSequenceLogprobs, EqualsUnchunkedLogprobsAndGradients) {
  double worst = 0;
  for (const std::optional<double> cap : {std::optional<double>(10.0), std::optional<double>()}) {
    for (int64_t chunk : {1, 3, 7, 1000}) {
      SCOPED_TRACE("softcap " + std::to_string(cap.value_or(0)) + " chunk " +
                   std::to_string(chunk));
      torch::manual_seed(100 + chunk);
      const torch::Tensor h0 = torch::randn({4, 9, 16}, torch::kFloat64) * 3;
      const torch::Tensor w0 = torch::randn({101, 16}, torch::kFloat64);
      const torch::Tensor labels = masked_labels(101);
      const torch::Tensor upstream = torch::randn({4}, torch::kFloat64);
      torch::Tensor h1 = h0.clone().requires_grad_(), w1 = w0.clone().requires_grad_();
      torch::Tensor h2 = h0.clone().requires_grad_(), w2 = w0.clone().requires_grad_();
      const SequenceLogprobs a = chunked_sequence_logprobs(h1, w1, labels, cap, chunk);
      const SequenceLogprobs b = sequence_logprobs_reference(h2, w2, labels, cap);
      ASSERT_EQ(a.sum.sizes(), (std::vector<int64_t>{4}));
      EXPECT_EQ(a.sum.scalar_type(), torch::kFloat64);
      EXPECT_TRUE(torch::equal(a.count, torch::tensor({6, 5, 0, 6}, torch::kInt64)));
      EXPECT_TRUE(torch::equal(a.count, b.count));
      EXPECT_LT(b.sum[0].item<double>(), 0);  // random inputs: the values are not trivially 0
      EXPECT_EQ(a.sum[2].item<double>(), 0.0);
      (a.sum * upstream).sum().backward();
      (b.sum * upstream).sum().backward();
      const double errors[] = {scaled_error(a.sum, b.sum), scaled_error(h1.grad(), h2.grad()),
                               scaled_error(w1.grad(), w2.grad())};
      for (double e : errors) {
        EXPECT_LT(e, 1e-10);
        worst = std::max(worst, e);
      }
      EXPECT_EQ(h1.grad()[2].abs().max().item<double>(), 0.0);  // a fully masked row
      EXPECT_GT(h2.grad().abs().max().item<double>(), 0.0);
    }
  }
  std::ostringstream measured;
  measured << worst;
  RecordProperty("worst_scaled_error", measured.str());
}

// A frozen (tied) lm_head gets no gradient and hidden's is still right; float32 inputs give
// float32 sums close to the reference.
TEST(ChunkedSequenceLogprobs, FrozenHeadAndFloat32) {
  torch::manual_seed(7);
  const torch::Tensor h0 = torch::randn({4, 9, 16}, torch::kFloat64);
  const torch::Tensor w = torch::randn({101, 16}, torch::kFloat64);
  const torch::Tensor labels = masked_labels(101);
  torch::Tensor h1 = h0.clone().requires_grad_(), h2 = h0.clone().requires_grad_();
  chunked_sequence_logprobs(h1, w, labels, 30.0, 5).sum.sum().backward();
  sequence_logprobs_reference(h2, w, labels, 30.0).sum.sum().backward();
  EXPECT_FALSE(w.grad().defined());
  EXPECT_LT(scaled_error(h1.grad(), h2.grad()), 1e-10);

  const torch::Tensor h32 = h0.to(torch::kFloat32), w32 = w.to(torch::kFloat32);
  const SequenceLogprobs a = chunked_sequence_logprobs(h32, w32, labels, 30.0, 5);
  EXPECT_EQ(a.sum.scalar_type(), torch::kFloat32);
  EXPECT_LT(scaled_error(a.sum, sequence_logprobs_reference(h32, w32, labels, 30.0).sum), 1e-5);
}

// Per-token log-probs and TRL's per-token details (entropy, mean logit, top-1, log Σp²) equal the
// unchunked computation, and gradients through an arbitrary per-token weighting do too.
TEST(ChunkedTokenLogprobs, EqualsUnchunkedValuesDetailsAndGradients) {
  for (const std::optional<double> cap : {std::optional<double>(10.0), std::optional<double>()}) {
    for (int64_t chunk : {1, 5, 1000}) {
      SCOPED_TRACE("softcap " + std::to_string(cap.value_or(0)) + " chunk " +
                   std::to_string(chunk));
      torch::manual_seed(300 + chunk);
      const torch::Tensor h0 = torch::randn({4, 9, 16}, torch::kFloat64) * 3;
      const torch::Tensor w0 = torch::randn({101, 16}, torch::kFloat64);
      const torch::Tensor labels = masked_labels(101);
      const torch::Tensor upstream = torch::randn({4, 9}, torch::kFloat64);
      torch::Tensor h1 = h0.clone().requires_grad_(), w1 = w0.clone().requires_grad_();
      torch::Tensor h2 = h0.clone().requires_grad_(), w2 = w0.clone().requires_grad_();
      TokenDetails da, db;
      const torch::Tensor a = chunked_token_logprobs(h1, w1, labels, cap, chunk, &da);
      const torch::Tensor b = token_logprobs_reference(h2, w2, labels, cap, &db);
      ASSERT_EQ(a.sizes(), (std::vector<int64_t>{4, 9}));
      EXPECT_LT(b.sum().item<double>(), 0);
      EXPECT_LT(scaled_error(a, b), 1e-10);
      EXPECT_LT(scaled_error(da.entropy, db.entropy), 1e-10);
      EXPECT_LT(scaled_error(da.mean_logit, db.mean_logit), 1e-10);
      EXPECT_LT(scaled_error(da.log_sum_sq_probs, db.log_sum_sq_probs), 1e-10);
      EXPECT_TRUE(torch::equal(da.is_top1, db.is_top1));
      EXPECT_GT(da.entropy.abs().sum().item<double>(), 0);
      EXPECT_FALSE(da.entropy.requires_grad());
      // Zero where not counted.
      const torch::Tensor ignored = labels == kIgnoreIndex;
      EXPECT_EQ(a.masked_select(ignored).abs().sum().item<double>(), 0.0);
      EXPECT_EQ(da.mean_logit.masked_select(ignored).abs().sum().item<double>(), 0.0);
      (a * upstream).sum().backward();
      (b * upstream).sum().backward();
      EXPECT_LT(scaled_error(h1.grad(), h2.grad()), 1e-10);
      EXPECT_LT(scaled_error(w1.grad(), w2.grad()), 1e-10);
    }
  }
}

}  // namespace
}  // namespace gemma
