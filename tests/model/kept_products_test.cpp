#include "model/kept_products.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <string>

#include "model/gemma4_hf_checkpoint.h"
#include "model/linear.h"
#include "peft/lora_adapters.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::random_ids;
using testing::relative_error;
using testing::ScratchDir;
using testing::write_random_checkpoint;

// A replayed projection gives back what was recorded, not a new product of its input, and its
// input gradient is grad · W.
TEST(KeptProducts, ReplayGivesTheRecordedProductAndDifferentiatesThroughTheWeight) {
  Linear linear(24, 10);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  {
    torch::NoGradGuard no_grad;
    linear->weight.copy_(torch::randn({10, 24}, gen));
  }
  linear->weight.requires_grad_(false);
  const torch::Tensor x = torch::randn({2, 5, 24}, gen);
  KeptProducts kept;
  torch::Tensor recorded;
  {
    torch::NoGradGuard no_grad;
    const KeptProductsScope scope(kept, KeptProducts::Mode::kRecord);
    recorded = linear(x);
  }
  ASSERT_EQ(kept.products().size(), 1U);
  EXPECT_TRUE(torch::equal(recorded, torch::nn::functional::linear(x, linear->weight)));

  const torch::Tensor other = torch::randn({2, 5, 24}, gen).requires_grad_(true);
  torch::Tensor replayed;
  {
    const KeptProductsScope scope(kept, KeptProducts::Mode::kReplay);
    replayed = linear(other);
  }
  EXPECT_EQ(kept.remaining(), 0U);
  EXPECT_TRUE(torch::equal(replayed, recorded));  // the kept product, not other · Wᵀ
  const torch::Tensor grad = torch::randn({2, 5, 10}, gen);
  replayed.backward(grad);
  EXPECT_LT(relative_error(other.grad(), torch::matmul(grad, linear->weight)), 1e-6);
}

// A replay that asks for more products than were recorded, or for one of another shape, fails
// with a message instead of computing with the wrong tensor.
TEST(KeptProducts, AMismatchedReplayIsAnError) {
  Linear linear(8, 4);
  linear->weight.requires_grad_(false);
  KeptProducts kept;
  {
    torch::NoGradGuard no_grad;
    const KeptProductsScope scope(kept, KeptProducts::Mode::kRecord);
    linear(torch::randn({3, 8}));
  }
  {
    const KeptProductsScope scope(kept, KeptProducts::Mode::kReplay);
    EXPECT_THROW(linear(torch::randn({4, 8})), c10::Error);  // 4 rows where 3 were kept
  }
  {
    const KeptProductsScope scope(kept, KeptProducts::Mode::kReplay);
    linear(torch::randn({3, 8}));                            // the mismatch above took nothing
    EXPECT_THROW(linear(torch::randn({3, 8})), c10::Error);  // one more than recorded
  }
}

// Every trainable parameter's gradient of sum(logits · probe), checkpointed, with or without the
// kept matmuls, after torch::manual_seed(seed) (LoRA dropout draws its masks from it).
std::map<std::string, torch::Tensor> gradients(Gemma4ForCausalLM& model, const torch::Tensor& ids,
                                               bool keep_matmuls) {
  model->model->set_gradient_checkpointing(true, keep_matmuls);
  model->zero_grad();
  Gemma4Input in;
  in.input_ids = ids;
  torch::manual_seed(31);
  const torch::Tensor logits = model->forward(in);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(32);
  (logits.to(torch::kFloat32) * torch::randn(logits.sizes(), gen)).sum().backward();
  std::map<std::string, torch::Tensor> grads;
  for (const auto& [name, p] : trainable_parameters(model)) grads[name] = p.grad().clone();
  return grads;
}

// Keeping the frozen projections' outputs changes what backward computes, not what it gives:
// dense and NF4 bases, float32 and bf16, LoRA with dropout and DoRA, on configs with KV-shared
// layers and per-layer inputs (tiny-e2b) and with experts and a router (tiny-moe).
TEST(KeptProducts, CheckpointedGradientsAreTheRecomputedOnes) {
  for (const char* name : {"tiny-e2b", "tiny-moe"}) {
    const Gemma4Config c = bundled_config(name);
    ScratchDir dir;
    write_random_checkpoint(c, 41, torch::kFloat32, dir / "f32");
    for (const torch::ScalarType dtype : {torch::kFloat32, torch::kBFloat16}) {
      for (const bool nf4 : {false, true}) {
        for (const bool dora : {false, true}) {
          std::ostringstream what;
          what << name << ' ' << dtype << (nf4 ? " NF4" : " dense") << (dora ? " DoRA" : " LoRA");
          SCOPED_TRACE(what.str());
          Gemma4LoadOptions options;
          options.dtype = dtype;
          options.nf4_base = nf4 ? Nf4Base::kAlways : Nf4Base::kNever;
          Gemma4ForCausalLM model = load_gemma4(dir / "f32", options).model;
          AdapterSpec spec;
          spec.lora.r = 4;
          spec.lora.alpha = 8;
          spec.lora.dropout = dora ? 0.0 : 0.1;
          spec.lora.use_dora = dora;
          spec.lora.init_lora_weights = false;  // B random too, so the adapters matter
          attach_adapters(model, spec);
          model->train();
          const torch::Tensor ids = random_ids(2, 9, c.vocab_size, 33);
          const auto recomputed = gradients(model, ids, false);
          const auto kept = gradients(model, ids, true);
          ASSERT_FALSE(recomputed.empty());
          for (const auto& [param, g] : recomputed) {
            ASSERT_TRUE(kept.at(param).defined()) << param;
            EXPECT_LT(relative_error(kept.at(param).to(torch::kFloat32), g.to(torch::kFloat32)),
                      dtype == torch::kFloat32 ? 1e-5 : 1e-2)
                << param;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace gemma
