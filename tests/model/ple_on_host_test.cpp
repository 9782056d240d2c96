// Where the PLE table lives (Gemma4LoadOptions::ple_on_host): on a CUDA device it stays in host
// memory and only the looked-up rows cross, with logits bit-identical to a table on the device.
// On a machine without a GPU the placement is checked on the CPU and the comparison is skipped.
#include <gtest/gtest.h>

#include "model/gemma4_hf_checkpoint.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::random_ids;
using testing::ScratchDir;

torch::Tensor logits(Gemma4ForCausalLM& model, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  Gemma4Input in;
  in.input_ids = ids.to(model->device());
  return model->forward(in).cpu();
}

TEST(PleOnHost, TheTableStaysOnTheHostAndTheLogitsAreBitIdentical) {
  const Gemma4Config c = bundled_config("tiny-e2b");
  ASSERT_TRUE(c.has_ple());
  ScratchDir dir;
  testing::write_random_checkpoint(c, 5, torch::kFloat32, dir / "model");
  const torch::Tensor ids = random_ids(2, 9, c.vocab_size, 3);

  Gemma4LoadOptions options;
  LoadedGemma4 cpu = load_gemma4(dir / "model", options);
  EXPECT_TRUE(cpu.model->model->embed_tokens_per_layer->weight.is_cpu());
  const torch::Tensor expected = logits(cpu.model, ids);

  if (!torch::cuda::is_available())
    GTEST_SKIP() << "no CUDA device: the host table feeding a GPU is not run here";
  options.device = torch::Device(torch::kCUDA);
  for (const bool on_host : {true, false}) {
    SCOPED_TRACE(on_host ? "ple_on_host" : "table on the device");
    options.ple_on_host = on_host;
    LoadedGemma4 gpu = load_gemma4(dir / "model", options);
    EXPECT_EQ(gpu.model->model->embed_tokens_per_layer->weight.is_cpu(), on_host);
    EXPECT_TRUE(gpu.model->model->embed_tokens->weight.is_cuda());
    const torch::Tensor a = logits(gpu.model, ids);
    if (on_host) {
      options.ple_on_host = false;
      LoadedGemma4 other = load_gemma4(dir / "model", options);
      EXPECT_TRUE(torch::equal(a, logits(other.model, ids)));
    }
    // Against the CPU model: the same model on another device, to rounding.
    EXPECT_LT(testing::relative_error(a, expected), 1e-4);
  }
}

}  // namespace
}  // namespace gemma
