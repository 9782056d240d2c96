// LoraLinear is its own module beside the frozen projection: the walk for projections never finds
// an adapter's matrices, the saved names stay PEFT's, and an NF4 base keeps its bytes through
// model->to(device, dtype) with the adapter attached.
#include "peft/lora_linear.h"

#include <gtest/gtest.h>

#include <set>

#include "model/gemma4_hf_checkpoint.h"
#include "peft/lora_adapters.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::logits_of;
using testing::random_ids;
using testing::random_model;
using testing::relative_error;
using testing::ScratchDir;
using testing::write_random_checkpoint;

TEST(LoraLinear, WalkFindsExactlyTheProjections) {
  for (const char* name : {"tiny-e2b", "tiny-moe", "tiny-31b"}) {
    SCOPED_TRACE(name);
    Gemma4ForCausalLM model = random_model(bundled_config(name), 1);
    std::vector<std::string> before;
    for (const auto& [path, linear] : projections(model)) before.push_back(path);
    AdapterSpec spec;
    spec.lora.use_dora = true;
    const std::vector<std::string> adapted = attach_adapters(model, spec);
    std::vector<std::string> after;
    for (const auto& [path, linear] : projections(model)) after.push_back(path);
    EXPECT_EQ(after, before);  // no adapter matrix counted as a projection
    for (const std::string& path : after) EXPECT_EQ(path.find("lora_"), std::string::npos) << path;
    // Every Linear the walk of named_modules() finds as a projection is one of ours; the
    // adapter's own matrices are there as LibTorch Linears, under PEFT's names.
    size_t lora_matrices = 0;
    for (const auto& m : model->named_modules()) {
      if (m.value()->as<torch::nn::LinearImpl>() != nullptr) {
        ++lora_matrices;
        const std::string& key = m.key();
        EXPECT_TRUE(key.size() > 7 && (key.compare(key.size() - 7, 7, ".lora_A") == 0 ||
                                       key.compare(key.size() - 7, 7, ".lora_B") == 0))
            << key;
      }
    }
    EXPECT_EQ(lora_matrices, 2 * adapted.size());
    const auto adapters = lora_adapters(model);
    ASSERT_EQ(adapters.size(), adapted.size());
    std::set<std::string> names;
    for (const auto& [n, p] : trainable_parameters(model)) names.insert(n);
    for (const auto& [path, lora] : adapters) {
      EXPECT_TRUE(names.count(path + ".lora_A.weight")) << path;
      EXPECT_TRUE(names.count(path + ".lora_B.weight")) << path;
      EXPECT_TRUE(names.count(path + ".lora_magnitude_vector")) << path;
    }
    EXPECT_EQ(names.size(), 3 * adapted.size());
  }
}

TEST(LoraLinear, Nf4BaseKeepsItsBytesThroughToDeviceAndDtype) {
  const Gemma4Config c = bundled_config("tiny-moe");
  ScratchDir dir;
  write_random_checkpoint(c, 3, torch::kFloat32, dir.path() / "m");
  Gemma4LoadOptions options;
  options.nf4_base = Nf4Base::kAlways;
  Gemma4ForCausalLM model = load_gemma4(dir.path() / "m", options).model;
  AdapterSpec spec;
  spec.lora.init_lora_weights = false;
  attach_adapters(model, spec);

  std::map<std::string, torch::Tensor> nf4_before;
  for (const auto& b : model->named_buffers()) {
    if (is_nf4_buffer_name(b.key())) nf4_before[b.key()] = b.value().clone();
  }
  ASSERT_FALSE(nf4_before.empty());
  EXPECT_EQ(static_cast<int64_t>(nf4_before.size()) % 5, 0);  // five parts a weight
  int64_t nf4_buffer_bytes = 0;
  for (const auto& [k, t] : nf4_before) nf4_buffer_bytes += t.nbytes();
  EXPECT_EQ(nf4_buffer_bytes, nf4_base_bytes(model));  // the buffers are the NF4 weights

  const torch::Tensor ids = random_ids(1, 7, c.vocab_size, 4);
  const torch::Tensor f32_logits = logits_of(model, ids);
  model->to(torch::kCPU, torch::kBFloat16);

  size_t seen = 0;
  for (const auto& b : model->named_buffers()) {
    if (!is_nf4_buffer_name(b.key())) continue;
    ++seen;
    const torch::Tensor& before = nf4_before.at(b.key());
    EXPECT_EQ(b.value().scalar_type(), before.scalar_type()) << b.key();
    EXPECT_TRUE(torch::equal(b.value(), before)) << b.key();
  }
  EXPECT_EQ(seen, nf4_before.size());
  // The projections compute from those very buffers, and everything floating became bf16.
  for (const auto& [path, linear] : projections(model)) {
    if (!linear->is_nf4()) continue;
    EXPECT_EQ(linear->nf4_weight()->packed.data_ptr(),
              model->named_buffers()[path + ".weight_nf4_packed"].data_ptr())
        << path;
    EXPECT_EQ(linear->weight.scalar_type(), torch::kBFloat16);
    EXPECT_EQ(linear->weight.sizes(),
              (std::vector<int64_t>{linear->out_features(), linear->in_features()}));
    EXPECT_LE(linear->weight.storage().nbytes(), 8u) << "placeholder materialised: " << path;
  }
  for (const auto& [name, p] : trainable_parameters(model))
    EXPECT_EQ(p.scalar_type(), torch::kBFloat16) << name;
  // bf16 through a random tiny MoE: about 0.07-0.12 of relative difference, depending on the
  // prompt (the dense and the fused NF4 product alike), where a broken cast would give ~1
  const torch::Tensor bf16_logits = logits_of(model, ids).to(torch::kFloat32);
  EXPECT_LT((bf16_logits - f32_logits).norm().item<double>() / f32_logits.norm().item<double>(),
            0.2);
}

}  // namespace
}  // namespace gemma
