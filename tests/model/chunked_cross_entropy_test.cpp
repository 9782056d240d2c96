#include "model/chunked_cross_entropy.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace gemma
