#include "model/activation_checkpointing.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <string>

#include "peft/lora_adapters.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::random_ids;
using testing::random_model;
using testing::relative_error;

// A tiny E2B (KV-shared layers included) in train() mode with LoRA on every projection and
// dropout 0.1, so every adapted projection draws a dropout mask in each forward.
Gemma4ForCausalLM model_with_dropout_adapters() {
  Gemma4ForCausalLM model = random_model(bundled_config("tiny-e2b"), 21);
  AdapterSpec spec;
  spec.lora.r = 4;
  spec.lora.alpha = 8;
  spec.lora.dropout = 0.1;
  spec.lora.init_lora_weights = false;  // B random too, so the adapters change the logits
  attach_adapters(model, spec);
  model->train();
  return model;
}

// The adapter gradients of sum(logits · probe) after torch::manual_seed(seed).
std::map<std::string, torch::Tensor> adapter_gradients(Gemma4ForCausalLM& model,
                                                       const torch::Tensor& ids,
                                                       const torch::Tensor& probe,
                                                       bool checkpointing, uint64_t seed) {
  model->model->set_gradient_checkpointing(checkpointing);
  model->zero_grad();
  Gemma4Input in;
  in.input_ids = ids;
  torch::manual_seed(seed);
  (model->forward(in) * probe).sum().backward();
  std::map<std::string, torch::Tensor> grads;
  for (const auto& [name, p] : trainable_parameters(model)) grads[name] = p.grad().clone();
  return grads;
}

// The recomputation in backward draws the forward's dropout masks again (the RNG state is saved
// and restored around it), so checkpointing on and off give the same adapter gradients.
TEST(ActivationCheckpointing, DropoutMasksMatchWhenRecomputing) {
  Gemma4ForCausalLM model = model_with_dropout_adapters();
  const int64_t vocab = model->config().vocab_size;
  const torch::Tensor ids = random_ids(2, 9, vocab, 22);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(23);
  const torch::Tensor probe = torch::randn({2, 9, vocab}, gen, torch::kFloat32);

  const auto plain = adapter_gradients(model, ids, probe, false, 24);
  const auto checkpointed = adapter_gradients(model, ids, probe, true, 24);
  ASSERT_FALSE(plain.empty());
  double worst = 0;
  for (const auto& [name, g] : plain) {
    ASSERT_TRUE(checkpointed.at(name).defined()) << name;
    const double err = relative_error(checkpointed.at(name), g);
    worst = std::max(worst, err);
    EXPECT_LT(err, 1e-5) << name;
  }
  std::ostringstream measured;
  measured << worst;
  RecordProperty("worst_relative_error", measured.str());

  // Dropout does matter: another seed draws other masks and so other gradients.
  const auto other_seed = adapter_gradients(model, ids, probe, false, 25);
  double differs = 0;
  for (const auto& [name, g] : plain)
    differs = std::max(differs, relative_error(other_seed.at(name), g));
  EXPECT_GT(differs, 1e-2);
  measured.str("");
  measured << differs;
  RecordProperty("other_seed_relative_difference", measured.str());
}

// The backward gives the generators back as it found them: the draws after a checkpointed step
// are those after a plain one.
TEST(ActivationCheckpointing, BackwardLeavesTheRandomStreamUnchanged) {
  Gemma4ForCausalLM model = model_with_dropout_adapters();
  const int64_t vocab = model->config().vocab_size;
  const torch::Tensor ids = random_ids(1, 7, vocab, 26);
  const torch::Tensor probe = torch::ones({1, 7, vocab});
  adapter_gradients(model, ids, probe, false, 27);
  const torch::Tensor after_plain = torch::rand({16});
  adapter_gradients(model, ids, probe, true, 27);
  const torch::Tensor after_checkpointed = torch::rand({16});
  EXPECT_TRUE(torch::equal(after_plain, after_checkpointed));
}

}  // namespace
}  // namespace gemma
