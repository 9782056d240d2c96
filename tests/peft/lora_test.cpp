#include "peft/lora_adapters.h"

#include <gtest/gtest.h>

#include <chrono>
#include <set>

#include "io/input_error.h"
#include "peft/target_regex.h"
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

// The InputError a pattern gets, or "" when it compiles.
std::string regex_error(const std::string& pattern) {
  try {
    check_target_regex(pattern, "--target-regex");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

// Each expectation is what Python 3.11's re.fullmatch(pattern, path) (PEFT 0.21.2's
// match_target_against_key) gives.
TEST(TargetRegex, MatchesAsPythonReFullmatch) {
  const struct {
    const char* pattern;
    const char* path;
    bool matches;
  } cases[] = {
      {R"(model\.layers\.\d+\.self_attn\.(k|v)_proj)", "model.layers.12.self_attn.k_proj", true},
      {R"(model\.layers\.\d+\.self_attn\.(k|v)_proj)", "model.layers.12.self_attn.k_proj.x", false},
      {R"(.*(q|v)_proj)", "model.layers.0.self_attn.q_proj", true},
      {"q_proj", "model.layers.0.self_attn.q_proj", false},  // the whole path, not a suffix
      {R"(.*\.layers\.[0-3]\..*)", "model.layers.3.mlp.up_proj", true},
      {R"(.*\.layers\.[0-3]\..*)", "model.layers.13.mlp.up_proj", false},
      {"a|ab", "ab", true},  // full match tries every alternative, not the first that matches
      {R"((?i)MODEL\..*)", "model.x", true},
      {R"(.*q_proj$)", "a.q_proj", true},
      {"(a+)+$", "aaaa", true},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.pattern) + " on " + c.path);
    EXPECT_EQ(TargetRegex(c.pattern, "test").full_match(c.path), c.matches);
  }
}

// Backtracking engines take exponential time on these (std::regex needs a second for (a+)+$ on 24
// a's, and 12 times as long for every 4 more); RE2 is linear in the path.
TEST(TargetRegex, CatastrophicPatternsMatchInLinearTime) {
  const std::string as(100000, 'a');
  const std::string path = "model.layers.0.self_attn.q_proj." + as;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(TargetRegex("(a+)+$", "test").full_match(as + "b"));
  EXPECT_TRUE(TargetRegex("(a+)+$", "test").full_match(as));
  EXPECT_FALSE(TargetRegex("(.*)*x", "test").full_match(path));
  EXPECT_FALSE(TargetRegex("([a-z_.0-9]+)+x", "test").full_match(path));
  EXPECT_TRUE(TargetRegex("(([a-z_.0-9]+)+)*", "test").full_match(path));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 1.0);
}

TEST(TargetRegex, RefusesWhatRe2CannotDoByName) {
  const std::string backref = regex_error(R"((q|k)_proj\.\1)");
  EXPECT_EQ(backref.rfind("--target-regex: regular expression \"(q|k)_proj\\\\.\\\\1\"", 0), 0u)
      << backref;
  EXPECT_NE(backref.find("invalid escape sequence"), std::string::npos) << backref;
  EXPECT_NE(backref.find("no backreferences, lookarounds"), std::string::npos) << backref;
  EXPECT_NE(regex_error("q(?=_proj)").find("invalid perl operator"), std::string::npos);
  EXPECT_NE(regex_error("(?<=self_attn\\.)q_proj").find("lookarounds"), std::string::npos);
  EXPECT_NE(regex_error("(q_proj").find("missing )"), std::string::npos);
  // Python's re reads {,3} as {0,3}, RE2 as text: refused rather than matched differently.
  EXPECT_NE(regex_error("model.layers.1{,3}.*").find("write {0,n}"), std::string::npos);
  EXPECT_EQ(regex_error("model.layers.1{0,3}.*"), "");
  EXPECT_EQ(regex_error(R"(x\{,3}|[{,3}])"), "");  // escaped or in a class: text in both
  const std::string long_pattern(kMaxTargetRegexBytes + 1, 'a');
  EXPECT_NE(regex_error(long_pattern).find("over the limit of 4096"), std::string::npos);
  EXPECT_EQ(regex_error(std::string(kMaxTargetRegexBytes, 'a')), "");
  // A newline in a pattern stays escaped, so the message is one line.
  EXPECT_EQ(regex_error("(\nq").find('\n'), std::string::npos);

  // attach_adapters refuses it before touching the model.
  Gemma4ForCausalLM model = random_model(bundled_config("tiny-e2b"), 1);
  AdapterSpec spec;
  spec.target_regex = R"((q)\1_proj)";
  try {
    attach_adapters(model, spec);
    ADD_FAILURE() << "a backreference was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("target_modules: regular expression"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(lora_adapters(model).empty());
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
