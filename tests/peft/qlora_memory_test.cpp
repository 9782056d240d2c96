// Memory of a QLoRA training step on a ~300M-parameter config (configs/mem-300m.json), counted at
// LibTorch's CPU allocator: the frozen base stays at its NF4 bytes (plus at most one dequantized
// weight while a matmul runs), and gradient checkpointing cuts peak activation memory at 1024
// tokens to at most 40% of a step without it.
#include <gtest/gtest.h>

#include <cstdio>

#include "model/gemma4_hf_checkpoint.h"
#include "peft/lora_adapters.h"
#include "tests/model/test_models.h"
#include "trainer/chunked_cross_entropy.h"
#include "trainer/memory_meter.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::random_ids;
using testing::ScratchDir;
using testing::write_random_checkpoint;

// Bytes of every parameter and buffer that owns real storage (placeholders of NF4 weights do not).
int64_t dense_bytes(Gemma4ForCausalLM& model) {
  int64_t n = 0;
  for (const auto& p : model->named_parameters()) {
    if (p.value().storage().nbytes() > 8) n += p.value().nbytes();
  }
  for (const auto& b : model->named_buffers()) {
    if (!is_nf4_buffer_name(b.key())) n += b.value().nbytes();  // NF4 parts: counted as NF4 bytes
  }
  return n;
}

// One forward + backward of the causal-LM loss over `tokens` tokens; returns the peak bytes it
// allocated beyond what was live before it.
int64_t training_step_peak(Gemma4ForCausalLM& model, CountingCpuAllocator& counter, int64_t tokens,
                           bool checkpointing) {
  model->train();
  model->model->set_gradient_checkpointing(checkpointing);
  const Gemma4Config& c = model->config();
  const torch::Tensor ids = random_ids(1, tokens + 1, c.vocab_size, 3);
  const int64_t start = counter.live_bytes();
  counter.reset_peak();
  {
    Gemma4Input in;
    in.input_ids = ids.narrow(1, 0, tokens);
    const torch::Tensor hidden = model->model->forward(in).reshape({tokens, c.hidden_size});
    const torch::Tensor labels = ids.narrow(1, 1, tokens).reshape({tokens});
    const torch::Tensor loss = chunked_causal_lm_loss(hidden, model->lm_head_weight(), labels,
                                                      c.final_logit_softcapping, 256);
    loss.backward();
  }
  const int64_t peak = counter.peak_bytes() - start;
  for (auto& [name, p] : trainable_parameters(model)) p.mutable_grad().reset();
  return peak;
}

TEST(QloraMemory, BaseStaysAtNf4BytesAndCheckpointingCutsActivations) {
  const Gemma4Config c = bundled_config("mem-300m");
  int64_t parameters = 0;
  for (const Gemma4TensorInfo& info : gemma4_hf_checkpoint_layout(c)) {
    int64_t n = 1;
    for (int64_t d : info.shape) n *= d;
    parameters += info.used ? n : 0;
  }
  EXPECT_GT(parameters, 250'000'000);
  EXPECT_LT(parameters, 350'000'000);

  ScratchDir dir;
  write_random_checkpoint(c, 1, torch::kBFloat16, dir / "bf16");
  CountingCpuAllocator& counter = CountingCpuAllocator::install();
  const int64_t before_load = counter.live_bytes();
  Gemma4LoadOptions options;
  options.nf4_base = Nf4Base::kAlways;
  Gemma4ForCausalLM model = load_gemma4(dir / "bf16", options).model;
  const int64_t nf4 = nf4_base_bytes(model);
  const int64_t loaded = counter.live_bytes() - before_load;
  const int64_t base = loaded - dense_bytes(model);
  std::printf("parameters %lld, NF4 bytes %lld, base bytes held after load %lld, dense rest %lld\n",
              static_cast<long long>(parameters), static_cast<long long>(nf4),
              static_cast<long long>(base), static_cast<long long>(loaded - base));
  EXPECT_NEAR(static_cast<double>(base), static_cast<double>(nf4), 0.1 * static_cast<double>(nf4));

  AdapterSpec spec;
  spec.lora.r = 16;
  spec.lora.alpha = 32;
  attach_adapters(model, spec);

  // A short step: activations are small, so what the step adds beyond its start is the adapter
  // gradients plus the dequantization workspace (one weight at a time; the largest is an MLP
  // matrix). The base held during the step thus stays within 10% of its NF4 bytes.
  int64_t adapter_bytes = 0;
  for (const auto& [name, p] : trainable_parameters(model)) adapter_bytes += p.nbytes();
  const int64_t largest_weight_f32 = c.hidden_size * c.intermediate_size * 4;
  const int64_t short_step = training_step_peak(model, counter, 16, true);
  std::printf(
      "16-token step: %lld bytes over its start (adapter gradients %lld, one dequantized "
      "MLP weight %lld)\n",
      static_cast<long long>(short_step), static_cast<long long>(adapter_bytes),
      static_cast<long long>(largest_weight_f32));
  EXPECT_LE(short_step - adapter_bytes - largest_weight_f32, nf4 / 10);
  EXPECT_NEAR(static_cast<double>(counter.live_bytes() - before_load - dense_bytes(model)),
              static_cast<double>(nf4), 0.1 * static_cast<double>(nf4));

  const int64_t without = training_step_peak(model, counter, 1024, false);
  const int64_t with = training_step_peak(model, counter, 1024, true);
  std::printf(
      "1024-token step peak activations: %lld bytes without checkpointing, %lld with (%.1f%%)\n",
      static_cast<long long>(without), static_cast<long long>(with),
      100.0 * static_cast<double>(with) / static_cast<double>(without));
  EXPECT_LE(static_cast<double>(with), 0.4 * static_cast<double>(without));
}

}  // namespace
}  // namespace gemma
