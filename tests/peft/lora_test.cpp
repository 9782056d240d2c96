#include "peft/lora_adapters.h"

#include <gtest/gtest.h>

#include <set>

#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::logits_of;
using testing::random_ids;
using testing::random_model;

// Gives every adapter non-zero B (and a magnitude away from its init) so the adapter matters.
void perturb_adapters(Gemma4ForCausalLM& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& [name, p] : trainable_parameters(model)) {
    p.add_(torch::randn(p.sizes(), gen, torch::kFloat64).to(p.scalar_type()) * 0.05);
  }
}

TEST(LoraAdapters, TargetsOnlyProjectionsThatExist) {
  const Gemma4Config e2b = bundled_config("tiny-e2b");  // layers 4-5 KV-shared
  Gemma4ForCausalLM model = random_model(e2b, 1);
  const auto paths = attach_adapters(model, {});
  const std::set<std::string> got(paths.begin(), paths.end());
  EXPECT_TRUE(got.count("model.layers.3.self_attn.k_proj"));
  EXPECT_FALSE(got.count("model.layers.4.self_attn.k_proj"));  // shared: no K/V of its own
  EXPECT_FALSE(got.count("model.layers.5.self_attn.v_proj"));
  EXPECT_TRUE(got.count("model.layers.5.self_attn.q_proj"));
  EXPECT_TRUE(got.count("model.layers.5.mlp.down_proj"));
  EXPECT_EQ(paths.size(), 4u * 7 + 2u * 5);
  // Parameter names are PEFT's saved keys without base_model.model.
  std::set<std::string> trainable;
  for (const auto& [name, p] : trainable_parameters(model)) trainable.insert(name);
  EXPECT_TRUE(trainable.count("model.layers.0.self_attn.q_proj.lora_A.weight"));
  EXPECT_TRUE(trainable.count("model.layers.0.self_attn.q_proj.lora_B.weight"));
  EXPECT_EQ(trainable.size(), 2 * paths.size());

  const Gemma4Config kv = bundled_config("tiny-31b");  // full layers 2 and 5: K = V, no v_proj
  Gemma4ForCausalLM k_eq_v = random_model(kv, 1);
  AdapterSpec spec;
  spec.target_regex = R"(model\.layers\.\d+\.self_attn\.(k|v)_proj)";
  const auto kv_paths = attach_adapters(k_eq_v, spec);
  EXPECT_EQ(kv_paths.size(), 6u + 4u);  // k everywhere, v only on the 4 sliding layers
}

// Base + adapter equals the dense model whose weights carry the adapter (LoRA: W + sBA; DoRA:
// (m/‖W + sBA‖)·(W + sBA)), in f64; adapters off equals the base.
TEST(LoraAdapters, ForwardEqualsDenseComputationInF64) {
  for (bool dora : {false, true}) {
    for (bool rslora : {false, true}) {
      SCOPED_TRACE(std::string(dora ? "DoRA" : "LoRA") + (rslora ? " rsLoRA" : ""));
      const Gemma4Config c = bundled_config("tiny-moe");
      Gemma4ForCausalLM adapted = random_model(c, 2, torch::kFloat64);
      Gemma4ForCausalLM dense = random_model(c, 2, torch::kFloat64);
      const torch::Tensor ids = random_ids(2, 9, c.vocab_size, 3);
      const torch::Tensor base = logits_of(adapted, ids);
      AdapterSpec spec;
      spec.lora = {4, 16.0, 0.0, rslora, dora};
      attach_adapters(adapted, spec);
      EXPECT_TRUE(torch::allclose(logits_of(adapted, ids), base, 0, 1e-12));  // B = 0 at init
      perturb_adapters(adapted, 4);
      std::map<std::string, LinearImpl*> dense_linears;
      for (const auto& m : dense->named_modules()) {
        if (auto* l = m.value()->as<LinearImpl>()) dense_linears[m.key()] = l;
      }
      {
        torch::NoGradGuard no_grad;
        for (const auto& m : adapted->named_modules()) {
          auto* l = m.value()->as<LinearImpl>();
          LoraLinearImpl* lora = l == nullptr ? nullptr : lora_of(*l);
          if (lora == nullptr) continue;
          torch::Tensor merged = l->weight + lora->delta();
          if (dora)
            merged = (lora->lora_magnitude_vector / merged.norm(2, {1})).unsqueeze(1) * merged;
          dense_linears.at(m.key())->weight.copy_(merged);
        }
      }
      const torch::Tensor with_adapter = logits_of(adapted, ids);
      EXPECT_LT((with_adapter - logits_of(dense, ids)).abs().max().item<double>(), 1e-10);
      EXPECT_GT((with_adapter - base).abs().max().item<double>(), 1e-4);
      {
        AdaptersDisabled off(adapted);
        EXPECT_TRUE(torch::allclose(logits_of(adapted, ids), base, 0, 1e-12));
      }
      EXPECT_TRUE(torch::equal(logits_of(adapted, ids), with_adapter));
    }
  }
}

// Gradients of A, B and the DoRA magnitude equal central finite differences (f64).
TEST(LoraAdapters, GradientsMatchFiniteDifferences) {
  for (bool dora : {false, true}) {
    SCOPED_TRACE(dora ? "DoRA" : "LoRA");
    DefaultDtypeGuard f64(torch::kFloat64);
    Linear layer(12, 7);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
    {
      torch::NoGradGuard no_grad;
      layer->weight.copy_(torch::randn({7, 12}, gen, torch::kFloat64));
    }
    layer->weight.set_requires_grad(false);
    LoraLinear lora = attach_lora(*layer, {3, 6.0, 0.0, false, dora}, gen);
    {
      torch::NoGradGuard no_grad;
      lora->lora_B->weight.copy_(torch::randn({7, 3}, gen, torch::kFloat64) * 0.3);
      if (dora) lora->lora_magnitude_vector.mul_(1.3);
    }
    const torch::Tensor x = torch::randn({5, 12}, gen, torch::kFloat64);
    const torch::Tensor probe = torch::randn({5, 7}, gen, torch::kFloat64);
    const auto loss = [&] { return (layer->forward(x) * probe).sum(); };
    std::vector<torch::Tensor> params = {lora->lora_A->weight, lora->lora_B->weight};
    if (dora) params.push_back(lora->lora_magnitude_vector);
    layer->zero_grad();
    loss().backward();
    for (torch::Tensor& p : params) {
      const torch::Tensor grad = p.grad().clone();
      torch::NoGradGuard no_grad;
      torch::Tensor flat = p.view({-1});
      for (int64_t i = 0; i < flat.numel(); i += 3) {
        const double orig = flat[i].item<double>(), eps = 1e-6;
        flat[i] = orig + eps;
        const double up = loss().item<double>();
        flat[i] = orig - eps;
        const double down = loss().item<double>();
        flat[i] = orig;
        // DoRA treats the weight norm as a constant (as PEFT does), so its A/B gradients are those
        // of the detached-norm function; finite differences see the norm move. Compare A/B for LoRA
        // only.
        if (dora && p.dim() == 2) continue;
        EXPECT_NEAR(grad.view({-1})[i].item<double>(), (up - down) / (2 * eps), 1e-6) << i;
      }
    }
  }
}

}  // namespace
}  // namespace gemma
