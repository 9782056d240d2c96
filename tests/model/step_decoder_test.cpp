// The step decoder against the LibTorch forward it replaces for decoding, step by step on small
// random models: PLE, KV sharing, sliding windows shorter than the run, K = V layers, a
// left-padded batch, dense and NF4 weights, float32 and bf16, with every CPU code this machine
// runs. float32 agrees to float32 rounding; bf16 is no further from the float64 result of the same
// weights than the LibTorch bf16 path is.
#include "model/gemma4_step_decoder.h"

#include <gtest/gtest.h>

#include "kernels/nf4.h"
#include "model/generation.h"
#include "model/linear.h"
#include "tests/model/test_models.h"

namespace gemma {
namespace {

using testing::bundled_config;
using testing::random_ids;
using testing::random_model;

// Every Linear whose rows are whole 64-blocks held as NF4 (as a QLoRA base holds them), plus the
// narrow ones too when `all`.
void quantize_linears(Gemma4ForCausalLM& model, bool all) {
  torch::NoGradGuard no_grad;
  for (const auto& m : model->named_modules()) {
    auto* lin = m.value()->as<LinearImpl>();
    if (lin == nullptr || (!all && lin->in_features() % kNf4BlockSize != 0)) continue;
    lin->set_nf4_weight(quantize_nf4(lin->weight.detach()));
  }
}

Gemma4ForCausalLM make_model(const std::string& name, torch::ScalarType dtype, bool nf4,
                             torch::ScalarType compute) {
  Gemma4ForCausalLM model = random_model(bundled_config(name), 21, dtype);
  if (nf4) quantize_linears(model, /*all=*/true);
  if (compute != dtype) model->to(compute);
  return model;
}

struct Prefilled {
  KvCache cache;
  torch::Tensor positions;  // [B, 1] of the last token
  torch::Tensor logits;     // [B, V] float32
};

// Two prompts of different lengths, left-padded, through the LibTorch forward.
Prefilled prefill(Gemma4ForCausalLM& model) {
  const Gemma4Config& c = model->config();
  torch::Tensor ids = random_ids(2, 7, c.vocab_size, 3);
  torch::Tensor mask = torch::ones({2, 7}, torch::kInt64);
  mask[1].narrow(0, 0, 3).fill_(0);
  ids[1].narrow(0, 0, 3).fill_(c.pad_token_id);
  const torch::Tensor positions = (mask.cumsum(1) - 1).clamp_min(0);
  Prefilled p{KvCache(c), positions.narrow(1, 6, 1), {}};
  torch::InferenceMode inference;
  const torch::Tensor h = model->model->forward({ids, mask, positions}, &p.cache);
  p.logits = model->logits(h.select(1, 6)).to(torch::kFloat32);
  return p;
}

torch::Tensor libtorch_step(Gemma4ForCausalLM& model, const torch::Tensor& tokens,
                            const torch::Tensor& positions, KvCache& cache) {
  torch::InferenceMode inference;
  const torch::Tensor h = model->model->forward(
      {tokens.view({-1, 1}), torch::ones({tokens.size(0), 1}, torch::kInt64), positions}, &cache);
  return model->logits(h.select(1, 0)).to(torch::kFloat32);
}

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

double max_abs(const torch::Tensor& t) { return t.abs().max().item<double>(); }

struct Case {
  std::string config;
  bool nf4;
  bool bf16_checkpoint = false;  // made in bf16, then computed in another dtype
};

// Runs `steps` decoding steps of the three paths on the same tokens (the float64 path's argmax):
// the step decoder and the LibTorch path in the compute dtype, the LibTorch path in float64.
// Calls check(step, decoder, libtorch, exact) with each step's logits.
template <typename Check>
void decode_side_by_side(const Case& k, torch::ScalarType compute, RowsCode code, int steps,
                         Check check) {
  const torch::ScalarType stored = k.bf16_checkpoint ? torch::kBFloat16 : compute;
  Gemma4ForCausalLM model = make_model(k.config, stored, k.nf4, compute);
  Gemma4ForCausalLM exact = make_model(k.config, stored, k.nf4, torch::kFloat64);
  Prefilled ours = prefill(model), theirs = prefill(model), reference = prefill(exact);
  Gemma4StepDecoder decoder(model, code);
  torch::Tensor positions = ours.positions;
  torch::Tensor next = reference.logits.argmax(-1);
  for (int s = 0; s < steps; ++s) {
    positions = positions + 1;
    const torch::Tensor a = decoder.step(to_vector(next), to_vector(positions), ours.cache);
    const torch::Tensor b = libtorch_step(model, next, positions, theirs.cache);
    const torch::Tensor e = libtorch_step(exact, next, positions, reference.cache);
    check(s, a, b, e);
    next = e.argmax(-1);
  }
  EXPECT_EQ(ours.cache.seen_tokens(), theirs.cache.seen_tokens());
}

const std::vector<Case> kCases = {{"tiny-e2b", false}, {"tiny-e2b", true}, {"tiny-31b", false},
                                  {"tiny-31b", true},  {"demo", false},    {"demo", true}};

TEST(StepDecoder, Float32EqualsTheLibTorchStepToRounding) {
  for (const Case& k : kCases) {
    for (const RowsCode code : rows_codes_here()) {
      if (code == RowsCode::kAvx512Bf16) continue;  // bf16 activations only
      SCOPED_TRACE(k.config + (k.nf4 ? " nf4 " : " dense ") + rows_code_name(code));
      // longer than tiny-e2b's and tiny-31b's sliding windows (4, 5)
      decode_side_by_side(
          k, torch::kFloat32, code, 12,
          [](int s, const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor&) {
            EXPECT_LT(max_abs(a - b), 1e-4 * max_abs(b)) << "step " << s;
          });
    }
  }
}

// A float32 model of bf16 values reads them as bf16 (half the bytes), with the same products.
TEST(StepDecoder, Float32OfBf16ValuesReadsThemAsBf16ToTheSameRounding) {
  for (const Case& k : kCases) {
    const Case from_bf16{k.config, k.nf4, /*bf16_checkpoint=*/true};
    Gemma4ForCausalLM widened = make_model(k.config, torch::kBFloat16, k.nf4, torch::kFloat32);
    Gemma4ForCausalLM plain = make_model(k.config, torch::kFloat32, k.nf4, torch::kFloat32);
    for (const RowsCode code : rows_codes_here()) {
      if (code == RowsCode::kAvx512Bf16) continue;  // bf16 activations only
      SCOPED_TRACE(k.config + (k.nf4 ? " nf4 " : " dense ") + rows_code_name(code));
      // dense: every product's weight (at least the head and 7 a layer in a layer of each two);
      // NF4: the tied head and the dense (narrow) weights of a bf16 NF4 weight, dequantized to bf16
      // values; nothing of a model made in float32
      const int narrowed = Gemma4StepDecoder(widened, code).narrowed_weights();
      EXPECT_GE(narrowed, k.nf4 ? 1 : 1 + 7 * widened->config().num_hidden_layers / 2);
      EXPECT_EQ(Gemma4StepDecoder(plain, code).narrowed_weights(), 0);
      decode_side_by_side(
          from_bf16, torch::kFloat32, code, 12,
          [](int s, const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor&) {
            EXPECT_LT(max_abs(a - b), 1e-4 * max_abs(b)) << "step " << s;
          });
    }
  }
}

TEST(StepDecoder, Bf16IsAsCloseToFloat64AsTheLibTorchStep) {
  for (const Case& k : kCases) {
    for (const RowsCode code : rows_codes_here()) {
      SCOPED_TRACE(k.config + (k.nf4 ? " nf4 " : " dense ") + rows_code_name(code));
      // the worst and the mean error over every step's logits, relative to the largest logit
      double ours = 0, theirs = 0, ours_mean = 0, theirs_mean = 0;
      decode_side_by_side(
          k, torch::kBFloat16, code, 12,
          [&](int, const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& e) {
            const double scale = max_abs(e);
            ours = std::max(ours, max_abs(a - e) / scale);
            theirs = std::max(theirs, max_abs(b - e) / scale);
            ours_mean += (a - e).abs().mean().item<double>() / scale;
            theirs_mean += (b - e).abs().mean().item<double>() / scale;
          });
      EXPECT_LT(ours, 1.5 * theirs) << "decoder " << ours << ", LibTorch " << theirs;
      EXPECT_LT(ours_mean, 1.2 * theirs_mean)
          << "decoder " << ours_mean / 12 << ", LibTorch " << theirs_mean / 12;
      std::printf("%s %s %s: worst %.4f (LibTorch %.4f), mean %.5f (LibTorch %.5f)\n",
                  k.config.c_str(), k.nf4 ? "nf4" : "dense", rows_code_name(code), ours, theirs,
                  ours_mean / 12, theirs_mean / 12);
    }
  }
}

TEST(StepDecoder, GenerateTakesItAndGivesTheLibTorchTokens) {
  for (const char* name : {"tiny-e2b", "tiny-31b"}) {
    SCOPED_TRACE(name);
    Gemma4ForCausalLM model = random_model(bundled_config(name), 8);
    const std::vector<std::vector<int64_t>> prompts = {to_vector(random_ids(1, 5, 512, 1)[0]),
                                                       to_vector(random_ids(1, 2, 512, 2)[0])};
    GenerationOptions g;
    g.max_new_tokens = 16;
    g.sampling.temperature = 0;
    const GenerationResult fast = generate(model, prompts, g);
    g.step_decoder = false;
    const GenerationResult plain = generate(model, prompts, g);
    EXPECT_TRUE(fast.used_step_decoder);
    EXPECT_FALSE(plain.used_step_decoder);
    EXPECT_EQ(fast.tokens, plain.tokens);
    // kept in a slot: built by the first call, the same one reused by the next (one prompt, then
    // both: another batch size), the same tokens
    std::shared_ptr<Gemma4StepDecoder> slot;
    g.step_decoder = true;
    g.step_decoder_slot = &slot;
    const GenerationResult first = generate(model, {prompts[1]}, g);
    ASSERT_NE(slot, nullptr);
    const Gemma4StepDecoder* built = slot.get();
    const GenerationResult again = generate(model, prompts, g);
    EXPECT_EQ(slot.get(), built);
    EXPECT_EQ(first.tokens[0], plain.tokens[1]);
    EXPECT_EQ(again.tokens, plain.tokens);
  }
}

TEST(StepDecoder, NamesWhatItCannotDecode) {
  Gemma4ForCausalLM moe = random_model(bundled_config("tiny-moe"), 1);
  ASSERT_TRUE(Gemma4StepDecoder::unsupported_reason(moe).has_value());
  EXPECT_NE(Gemma4StepDecoder::unsupported_reason(moe)->find("MoE"), std::string::npos);
  Gemma4Config eager_config = bundled_config("tiny-31b");
  eager_config.attn_implementation = AttentionImplementation::kEager;
  Gemma4ForCausalLM eager = random_model(eager_config, 1);
  EXPECT_TRUE(Gemma4StepDecoder::unsupported_reason(eager).has_value());
  Gemma4ForCausalLM f64 = random_model(bundled_config("tiny-31b"), 1, torch::kFloat64);
  EXPECT_TRUE(Gemma4StepDecoder::unsupported_reason(f64).has_value());
  EXPECT_THROW(Gemma4StepDecoder{f64}, c10::Error);
  if (rows_codes_here().empty()) return;
  Gemma4ForCausalLM plain = random_model(bundled_config("tiny-31b"), 1);
  EXPECT_FALSE(Gemma4StepDecoder::unsupported_reason(plain).has_value());
}

TEST(StepDecoder, RefusesBadStepsBeforeTouchingTheCache) {
  if (rows_codes_here().empty()) GTEST_SKIP() << "no AVX2 on this CPU";
  Gemma4ForCausalLM model = random_model(bundled_config("tiny-31b"), 2);
  Gemma4StepDecoder decoder(model);
  KvCache empty(model->config());
  EXPECT_THROW(decoder.step({1, 2}, {0, 0}, empty), c10::Error);  // no prefill
  Prefilled p = prefill(model);
  const int64_t seen = p.cache.seen_tokens();
  EXPECT_THROW(decoder.step({1}, {7}, p.cache), c10::Error);          // one row of two
  EXPECT_THROW(decoder.step({1, 512}, {7, 4}, p.cache), c10::Error);  // id outside the vocab
  EXPECT_THROW(decoder.step({1, 2}, {7}, p.cache), c10::Error);       // positions missing
  EXPECT_EQ(p.cache.seen_tokens(), seen);
}

}  // namespace
}  // namespace gemma
