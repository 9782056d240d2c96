// The QLoRA base: matmul against NF4 weights, models loaded with their decoder Linears and MoE
// experts in NF4, and adapters trained on top, each held against the same computation on the
// dequantized weights as plain dense tensors.
#include <gtest/gtest.h>

#include "kernels/nf4_matmul.h"
#include "model/gemma4_feed_forward.h"
#include "model/gemma4_hf_checkpoint.h"
#include "peft/lora_adapters.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::logits_of;
using testing::random_ids;
using testing::relative_error;
using testing::ScratchDir;
using testing::write_random_checkpoint;

TEST(Nf4Matmul, ForwardAndInputGradientEqualDequantizedMatmul) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  for (const auto& [out, in] :
       std::vector<std::pair<int64_t, int64_t>>{{67, 130}, {128, 64}, {5, 33}}) {
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      SCOPED_TRACE(std::to_string(out) + "x" + std::to_string(in) + " " + c10::toString(dtype));
      const Nf4Weight q = quantize_nf4(torch::randn({out, in}, gen).to(dtype));
      const torch::Tensor w = dequantize_nf4_as(q, torch::kFloat32);
      const torch::Tensor x0 = torch::randn({3, 5, in}, gen).to(dtype);
      const torch::Tensor g = torch::randn({3, 5, out}, gen).to(dtype);

      const torch::Tensor x = x0.clone().requires_grad_(true);
      const torch::Tensor y = nf4_linear(x, q);
      (y.to(torch::kFloat32) * g.to(torch::kFloat32)).sum().backward();

      const torch::Tensor y_ref = torch::matmul(x0.to(torch::kFloat32), w.t());
      const torch::Tensor gx_ref = torch::matmul(g.to(torch::kFloat32), w);
      const double tol = dtype == torch::kFloat32 ? 1e-6 : 2e-2;
      EXPECT_EQ(y.scalar_type(), dtype);
      EXPECT_LT(relative_error(y.to(torch::kFloat32), y_ref), tol);
      EXPECT_LT(relative_error(x.grad().to(torch::kFloat32), gx_ref), tol);
      // Without gradients (inference) the same numbers.
      torch::NoGradGuard no_grad;
      EXPECT_TRUE(torch::equal(nf4_linear(x0, q), y.detach()));
    }
  }
}

// The same model with every NF4 weight dequantized into a dense parameter.
Gemma4ForCausalLM dequantized_copy(Gemma4ForCausalLM& nf4, const std::filesystem::path& dense_dir) {
  Gemma4ForCausalLM dense = load_gemma4(dense_dir).model;
  torch::NoGradGuard no_grad;
  std::map<std::string, std::shared_ptr<torch::nn::Module>> modules;
  for (const auto& m : dense->named_modules()) modules[m.key()] = m.value();
  for (const auto& m : nf4->named_modules()) {
    if (const auto* linear = m.value()->as<LinearImpl>(); linear && linear->is_nf4()) {
      modules.at(m.key())->as<LinearImpl>()->weight.copy_(linear->dense_weight(torch::kFloat32));
    } else if (const auto* experts = m.value()->as<Gemma4ExpertsImpl>();
               experts && experts->is_nf4()) {
      auto* target = modules.at(m.key())->as<Gemma4ExpertsImpl>();
      for (int64_t e = 0; e < target->gate_up_proj.size(0); ++e) {
        target->gate_up_proj[e].copy_(
            dequantize_nf4_as(experts->nf4_weight(e, true), torch::kFloat32));
        target->down_proj[e].copy_(
            dequantize_nf4_as(experts->nf4_weight(e, false), torch::kFloat32));
      }
    }
  }
  return dense;
}

int64_t count_nf4_linears(Gemma4ForCausalLM& model) {
  int64_t n = 0;
  for (const auto& m : model->named_modules()) {
    if (const auto* linear = m.value()->as<LinearImpl>(); linear && linear->is_nf4()) ++n;
  }
  return n;
}

// A bf16 checkpoint quantized while loading, and the same checkpoint quantized by `quantize` and
// loaded as it is stored, hold the same NF4 bytes and give the dense-dequantized model's logits.
TEST(QloraBase, Nf4BaseEqualsItsDequantizedWeights) {
  for (const char* name : {"tiny-e2b", "tiny-moe", "tiny-31b"}) {
    SCOPED_TRACE(name);
    const Gemma4Config c = bundled_config(name);
    ScratchDir dir;
    write_random_checkpoint(c, 11, torch::kBFloat16, dir / "bf16");
    quantize_gemma4_checkpoint(dir / "bf16", dir / "nf4");

    Gemma4LoadOptions qlora;
    qlora.nf4_base = Nf4Base::kAlways;
    {
      // By default the router stays dense; every other decoder Linear is NF4, with no dense
      // weight left behind.
      Gemma4ForCausalLM model = load_gemma4(dir / "bf16", qlora).model;
      for (const auto& m : model->named_modules()) {
        if (auto* linear = m.value()->as<LinearImpl>()) {
          const bool router = m.key().find("router.proj") != std::string::npos;
          EXPECT_EQ(linear->is_nf4(), !router) << m.key();
          // A placeholder of the right shape over one element: the dense weight is gone.
          EXPECT_EQ(linear->weight.storage().nbytes() <= 4, !router) << m.key();
        }
      }
    }
    // The file stores the router in NF4 too (bitsandbytes quantizes every nn.Linear): compare
    // with the router in NF4 on both sides.
    qlora.nf4_router = true;
    Gemma4ForCausalLM streamed = load_gemma4(dir / "bf16", qlora).model;
    Gemma4ForCausalLM stored = load_gemma4(dir / "nf4", qlora).model;
    int64_t linears = 0, expected = 0;
    for (const auto& m : streamed->named_modules()) {
      if (auto* linear = m.value()->as<LinearImpl>()) {
        EXPECT_TRUE(linear->is_nf4()) << m.key();
        ++expected;
        if (linear->is_nf4()) {
          ++linears;
          const Nf4Weight* a = linear->nf4_weight();
          const Nf4Weight* b = stored->named_modules()[m.key()]->as<LinearImpl>()->nf4_weight();
          ASSERT_NE(b, nullptr) << m.key();
          EXPECT_TRUE(torch::equal(a->packed, b->packed)) << m.key();
          EXPECT_TRUE(torch::equal(a->absmax_codes, b->absmax_codes)) << m.key();
          EXPECT_EQ(a->offset, b->offset) << m.key();
        }
      }
      if (auto* experts = m.value()->as<Gemma4ExpertsImpl>()) EXPECT_TRUE(experts->is_nf4());
    }
    EXPECT_EQ(linears, expected);
    EXPECT_GT(nf4_base_bytes(streamed), 0);

    Gemma4ForCausalLM dense = dequantized_copy(streamed, dir / "bf16");
    const torch::Tensor ids = random_ids(2, 9, c.vocab_size, 3);
    const torch::Tensor reference = logits_of(dense, ids);
    EXPECT_LT(relative_error(logits_of(streamed, ids), reference), 1e-5);
    EXPECT_LT(relative_error(logits_of(stored, ids), reference), 1e-5);
    // The quantization is real: the bf16 model itself differs.
    Gemma4ForCausalLM original = load_gemma4(dir / "bf16").model;
    EXPECT_GT(relative_error(logits_of(original, ids), reference), 1e-3);
    EXPECT_EQ(count_nf4_linears(original), 0);
  }
}

// Adapters on an NF4 base, with gradient checkpointing, get the gradients they get on the
// dequantized dense base without it; the base gets none.
TEST(QloraBase, AdapterGradientsEqualDequantizedDenseBase) {
  for (bool dora : {false, true}) {
    for (const char* name : {"tiny-e2b", "tiny-moe"}) {
      SCOPED_TRACE(std::string(name) + (dora ? " DoRA" : " LoRA"));
      const Gemma4Config c = bundled_config(name);
      ScratchDir dir;
      write_random_checkpoint(c, 5, torch::kFloat32, dir / "f32");
      Gemma4LoadOptions qlora;
      qlora.nf4_base = Nf4Base::kAlways;
      Gemma4ForCausalLM nf4 = load_gemma4(dir / "f32", qlora).model;
      Gemma4ForCausalLM dense = dequantized_copy(nf4, dir / "f32");

      AdapterSpec spec;
      spec.lora.r = 4;
      spec.lora.alpha = 8;
      spec.lora.use_dora = dora;
      spec.target_modules.push_back("per_layer_input_gate");
      spec.target_modules.push_back("per_layer_projection");
      std::map<std::string, torch::Tensor> grads;
      const torch::Tensor ids = random_ids(2, 11, c.vocab_size, 9);
      for (Gemma4ForCausalLM* model : {&nf4, &dense}) {
        attach_adapters(*model, spec);
        {
          torch::NoGradGuard no_grad;
          auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
          for (auto& [n, p] : trainable_parameters(*model))
            p.add_(torch::randn(p.sizes(), gen) * 0.05);
        }
        (*model)->model->set_gradient_checkpointing(model == &nf4);
        Gemma4Input in;
        in.input_ids = ids;
        const torch::Tensor logits = (*model)->forward(in);
        auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
        (logits * torch::randn(logits.sizes(), gen)).sum().backward();
        for (const auto& p : (*model)->named_parameters()) {
          if (!p.value().requires_grad()) {
            EXPECT_FALSE(p.value().grad().defined()) << p.key();
            continue;
          }
          ASSERT_TRUE(p.value().grad().defined()) << p.key();
          if (model == &nf4) {
            grads[p.key()] = p.value().grad();
          } else {
            EXPECT_LT(relative_error(grads.at(p.key()), p.value().grad()), 1e-4) << p.key();
          }
        }
      }
      EXPECT_FALSE(grads.empty());
    }
  }
}

}  // namespace
}  // namespace gemma
