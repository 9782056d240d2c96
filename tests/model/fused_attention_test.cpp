// The fused attention path (LibTorch's scaled_dot_product_attention) against eager attention on
// random inputs: GQA, sliding-window and padding masks with rows that see no key, float32 to
// rounding with gradients, bf16 no further from float64 than eager; and whole models built either
// way give the same logits and gradients.
#include <gtest/gtest.h>

#include "io/input_error.h"
#include "model/attention_mask.h"
#include "model/gemma4_attention.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::random_ids;
using testing::random_model;

struct Inputs {
  torch::Tensor q, k, v, mask;
};

// B = 2, 8 query heads over `kv_heads` KV heads, T queries over T keys; row 1 is left-padded by 5
// (its first 5 queries see no key), sliding window of 7 when `sliding`.
Inputs random_inputs(int64_t kv_heads, int64_t T, bool sliding, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t B = 2, H = 8, d = 32;
  Inputs in;
  in.q = torch::randn({B, H, T, d}, torch::kFloat64);
  in.k = torch::randn({B, kv_heads, T, d}, torch::kFloat64);
  in.v = torch::randn({B, kv_heads, T, d}, torch::kFloat64);
  AttentionMaskSpec spec;
  spec.query_index = torch::arange(T);
  spec.key_index = torch::arange(T);
  spec.key_valid = torch::ones({B, T}, torch::kBool);
  spec.key_valid[1].narrow(0, 0, 5).fill_(false);
  if (sliding) spec.sliding_window = 7;
  in.mask = build_attention_mask(spec);
  return in;
}

TEST(FusedAttention, EqualsEagerInFloat32WithGradients) {
  for (const int64_t kv_heads : {8, 2, 1}) {
    for (const bool sliding : {false, true}) {
      SCOPED_TRACE("kv_heads " + std::to_string(kv_heads) + (sliding ? " sliding" : " full"));
      const Inputs in = random_inputs(kv_heads, 19, sliding, 3);
      ASSERT_FALSE(in.mask.any(-1).all().item<bool>());  // some rows see no key
      const auto run = [&](bool fused) {
        torch::Tensor q = in.q.to(torch::kFloat32).requires_grad_();
        torch::Tensor k = in.k.to(torch::kFloat32).requires_grad_();
        torch::Tensor v = in.v.to(torch::kFloat32).requires_grad_();
        const torch::Tensor out =
            fused ? fused_attention(q, k, v, in.mask, 1.0) : eager_attention(q, k, v, in.mask, 1.0);
        // A non-uniform upstream gradient.
        (out * torch::linspace(-1, 2, out.numel()).view(out.sizes())).sum().backward();
        return std::vector<torch::Tensor>{out.detach(), q.grad(), k.grad(), v.grad()};
      };
      const auto fused = run(true);
      const auto eager = run(false);
      for (size_t i = 0; i < fused.size(); ++i) {
        SCOPED_TRACE("tensor " + std::to_string(i));
        EXPECT_TRUE(torch::allclose(fused[i], eager[i], 1e-4, 1e-5))
            << (fused[i] - eager[i]).abs().max().item<double>();
      }
    }
  }
}

TEST(FusedAttention, Bf16IsNoFurtherFromFloat64ThanEager) {
  for (const bool sliding : {false, true}) {
    SCOPED_TRACE(sliding ? "sliding" : "full");
    const Inputs in = random_inputs(2, 64, sliding, 5);
    const auto bf16 = [](const torch::Tensor& t) { return t.to(torch::kBFloat16); };
    // The reference: eager in float64 on the bf16-rounded inputs.
    const torch::Tensor ref =
        eager_attention(bf16(in.q).to(torch::kFloat64), bf16(in.k).to(torch::kFloat64),
                        bf16(in.v).to(torch::kFloat64), in.mask, 1.0);
    const torch::Tensor fused = fused_attention(bf16(in.q), bf16(in.k), bf16(in.v), in.mask, 1.0);
    const torch::Tensor eager = eager_attention(bf16(in.q), bf16(in.k), bf16(in.v), in.mask, 1.0);
    ASSERT_EQ(fused.scalar_type(), torch::kBFloat16);
    const double fused_error = (fused.to(torch::kFloat64) - ref).abs().max().item<double>();
    const double eager_error = (eager.to(torch::kFloat64) - ref).abs().max().item<double>();
    EXPECT_LE(fused_error, eager_error);
    EXPECT_LT(fused_error, 0.05);
  }
}

torch::Tensor model_logits_and_grad(const Gemma4Config& c, AttentionImplementation impl,
                                    const torch::Tensor& ids, const torch::Tensor& mask,
                                    torch::Tensor* grad_norms) {
  Gemma4Config config = c;
  config.attn_implementation = impl;
  Gemma4ForCausalLM model = random_model(config, 17);
  Gemma4Input in;
  in.input_ids = ids;
  in.attention_mask = mask;
  const torch::Tensor logits = model->forward(in);
  (logits * mask.unsqueeze(-1)).pow(2).mean().backward();
  std::vector<torch::Tensor> norms;
  for (const auto& p : model->parameters())
    if (p.grad().defined()) norms.push_back(p.grad().norm());
  *grad_norms = torch::stack(norms);
  return logits.detach();
}

TEST(FusedAttention, ModelsBuiltEitherWayAgree) {
  for (const char* name : {"tiny-e2b", "tiny-31b", "tiny-moe"}) {
    SCOPED_TRACE(name);
    const Gemma4Config c = bundled_config(name);
    const torch::Tensor ids = random_ids(2, 3 * c.sliding_window + 2, c.vocab_size, 4);
    torch::Tensor mask = torch::ones_like(ids);
    mask[0].narrow(0, 0, 3).zero_();  // left padding
    torch::Tensor g_fused, g_eager;
    const torch::Tensor fused =
        model_logits_and_grad(c, AttentionImplementation::kSdpa, ids, mask, &g_fused);
    const torch::Tensor eager =
        model_logits_and_grad(c, AttentionImplementation::kEager, ids, mask, &g_eager);
    EXPECT_LT(testing::relative_error(fused, eager), 1e-5);
    EXPECT_LT(testing::relative_error(g_fused, g_eager), 1e-4);
  }
}

TEST(FusedAttention, ImplementationNamesAreTransformers) {
  EXPECT_EQ(attention_implementation_from_name("sdpa", "x"), AttentionImplementation::kSdpa);
  EXPECT_EQ(attention_implementation_from_name("eager", "x"), AttentionImplementation::kEager);
  try {
    attention_implementation_from_name("flash_attention_2", "--attn-implementation");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--attn-implementation: expected sdpa or eager"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace gemma
