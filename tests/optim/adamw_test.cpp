// optim/: AdamW against torch's formula and LibTorch's torch::optim::AdamW, the schedules against
// transformers, clipping against a plain computation, and AdamW8bit's quantizer and trajectory.
// Bit parity of AdamW8bit with bitsandbytes itself is tests/reference/test_adamw8bit.py.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "optim/adamw.h"
#include "optim/adamw_8bit.h"
#include "optim/blockwise_8bit.h"
#include "optim/grad_clip.h"
#include "optim/lr_schedule.h"
#include "optim/paged_state.h"

namespace gemma {
namespace {

NamedTensors random_params(torch::ScalarType dtype, int seed) {
  torch::manual_seed(seed);
  return {{"layers.0.q_proj.lora_A.weight", torch::randn({8, 33}, dtype)},
          {"layers.0.q_proj.lora_B.weight", torch::randn({65, 8}, dtype)},
          {"bias", torch::randn({7}, dtype)}};
}

NamedTensors clone_all(const NamedTensors& params) {
  NamedTensors out;
  for (const auto& [n, p] : params) out.emplace_back(n, p.clone());
  return out;
}

// The same gradient sequence for every copy: gradient `step` of parameter `i`.
torch::Tensor grad_for(const torch::Tensor& p, int step, int i) {
  torch::manual_seed(1000 + 17 * step + i);
  return torch::randn(p.sizes(), p.options());
}

void set_grads(NamedTensors& params, int step) {
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].second.mutable_grad() = grad_for(params[i].second, step, static_cast<int>(i));
  }
}

// torch/optim/adam.py _single_tensor_adam (decoupled weight decay), written out by hand.
void torch_adamw_by_hand(NamedTensors& params, int steps, double lr, double b1, double b2,
                         double eps, double wd) {
  std::vector<torch::Tensor> m, v;
  for (const auto& [n, p] : params) {
    m.push_back(torch::zeros_like(p));
    v.push_back(torch::zeros_like(p));
  }
  for (int t = 1; t <= steps; ++t) {
    for (size_t i = 0; i < params.size(); ++i) {
      torch::Tensor& p = params[i].second;
      const torch::Tensor g = grad_for(p, t - 1, static_cast<int>(i));
      p.mul_(1 - lr * wd);
      m[i].lerp_(g, 1 - b1);
      v[i].mul_(b2).addcmul_(g, g, 1 - b2);
      const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
      const torch::Tensor denom = (v[i].sqrt() / std::pow(bc2, 0.5)).add_(eps);
      p.addcdiv_(m[i], denom, -lr / bc1);
    }
  }
}

void expect_torch_formula_bit_for_bit(torch::ScalarType dtype) {
  NamedTensors ours = random_params(dtype, 1), hand = clone_all(ours);
  AdamWOptions o;
  o.lr = 3e-3;
  o.weight_decay = 0.05;
  AdamW opt(ours, o);
  for (int s = 0; s < 20; ++s) {
    set_grads(ours, s);
    opt.step();
  }
  torch_adamw_by_hand(hand, 20, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay);
  for (size_t i = 0; i < ours.size(); ++i) {
    EXPECT_TRUE(torch::equal(ours[i].second, hand[i].second)) << ours[i].first;
  }
}

void expect_libtorch_adamw(torch::ScalarType dtype) {
  NamedTensors ours = random_params(dtype, 2), theirs = clone_all(ours);
  AdamWOptions o;
  o.lr = 1e-2;
  o.weight_decay = 0.1;
  AdamW opt(ours, o);
  std::vector<torch::Tensor> tensors;
  for (auto& [n, p] : theirs) tensors.push_back(p);
  torch::optim::AdamW libtorch(tensors, torch::optim::AdamWOptions(o.lr)
                                            .betas({o.beta1, o.beta2})
                                            .eps(o.eps)
                                            .weight_decay(o.weight_decay));
  for (int s = 0; s < 30; ++s) {
    set_grads(ours, s);
    set_grads(theirs, s);
    opt.step();
    libtorch.step();
  }
  // LibTorch updates exp_avg with mul/add where torch.optim uses lerp: ulps apart, not bits.
  const double tol = dtype == torch::kFloat64 ? 1e-12 : 1e-5;
  for (size_t i = 0; i < ours.size(); ++i) {
    EXPECT_TRUE(torch::allclose(ours[i].second, theirs[i].second, tol, tol)) << ours[i].first;
  }
}

TEST(AdamW, EqualsTorchFormulaBitForBitF32) { expect_torch_formula_bit_for_bit(torch::kFloat32); }
TEST(AdamW, EqualsTorchFormulaBitForBitF64) { expect_torch_formula_bit_for_bit(torch::kFloat64); }
TEST(AdamW, MatchesLibTorchAdamWF32) { expect_libtorch_adamw(torch::kFloat32); }
TEST(AdamW, MatchesLibTorchAdamWF64) { expect_libtorch_adamw(torch::kFloat64); }

TEST(AdamW, GroupsHaveTheirOwnLrAndDecay) {
  torch::Tensor a = torch::ones({4}), b = torch::ones({4});
  AdamWOptions o;
  o.lr = 0.1;
  o.weight_decay = 0.5;
  AdamW opt({ParamGroup{{{"a", a}}, {}, {}}, ParamGroup{{{"b", b}}, 0.2, 0.0}}, o);
  a.mutable_grad() = torch::zeros({4});
  b.mutable_grad() = torch::zeros({4});
  opt.step();  // zero gradient: only the decay moves a parameter
  EXPECT_TRUE(torch::allclose(a, torch::full({4}, 1 - 0.1 * 0.5)));
  EXPECT_TRUE(torch::equal(b, torch::ones({4})));
  opt.set_lr_multiplier(0.5);
  EXPECT_DOUBLE_EQ(opt.groups()[0].lr, 0.05);
  EXPECT_DOUBLE_EQ(opt.groups()[1].lr, 0.1);
}

TEST(AdamW, DecayGroupsExcludeNormsAndBiases) {
  EXPECT_TRUE(is_decay_parameter_name("model.layers.0.self_attn.q_proj.lora_A.weight"));
  EXPECT_TRUE(is_decay_parameter_name("model.layers.0.mlp.down_proj.weight"));
  EXPECT_TRUE(is_decay_parameter_name("model.normalizer.weight"));  // not `norm` on its own
  EXPECT_FALSE(is_decay_parameter_name("model.layers.0.input_layernorm.weight"));
  EXPECT_FALSE(is_decay_parameter_name("model.layers.0.self_attn.q_norm.weight"));
  EXPECT_FALSE(is_decay_parameter_name("model.norm.weight"));
  EXPECT_FALSE(is_decay_parameter_name("norm.weight"));
  EXPECT_FALSE(is_decay_parameter_name("model.encoder.LayerNorm.weight"));
  EXPECT_FALSE(is_decay_parameter_name("model.RMSNorm.weight"));
  EXPECT_FALSE(is_decay_parameter_name("lm_head.bias"));
  const NamedTensors params = {{"a.lora_A.weight", torch::zeros({1})},
                               {"a.q_norm.weight", torch::zeros({1})},
                               {"b.lora_B.weight", torch::zeros({1})}};
  const auto groups = decay_parameter_groups(params, 0.01);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].weight_decay, 0.01);
  ASSERT_EQ(groups[0].params.size(), 2u);
  EXPECT_EQ(groups[0].params[1].first, "b.lora_B.weight");
  EXPECT_EQ(groups[1].weight_decay, 0.0);
  EXPECT_EQ(groups[1].params.at(0).first, "a.q_norm.weight");
  EXPECT_EQ(decay_parameter_groups({params[0]}, 0.01).size(), 1u);  // empty groups left out
}

TEST(AdamW, StateDictRoundTripContinuesTheSameTrajectory) {
  NamedTensors straight = random_params(torch::kFloat32, 3), resumed = clone_all(straight);
  AdamW a(straight), b(resumed);
  for (int s = 0; s < 3; ++s) {
    set_grads(straight, s);
    a.step();
    set_grads(resumed, s);
    b.step();
  }
  const NamedTensors state = b.state_dict();
  ASSERT_EQ(state.size(), 9u);
  EXPECT_EQ(state[2].first, "layers.0.q_proj.lora_A.weight.step");
  AdamW c(resumed);
  c.load_state_dict(state);
  for (int s = 3; s < 6; ++s) {
    set_grads(straight, s);
    a.step();
    set_grads(resumed, s);
    c.step();
  }
  for (size_t i = 0; i < straight.size(); ++i) {
    EXPECT_TRUE(torch::equal(straight[i].second, resumed[i].second));
  }
  NamedTensors bad = state;
  bad.emplace_back("other.exp_avg", torch::zeros({1}));
  EXPECT_THROW(c.load_state_dict(bad), std::invalid_argument);
  bad = state;
  bad[0].second = torch::zeros({2, 2});
  EXPECT_THROW(c.load_state_dict(bad), std::invalid_argument);
}

// Values from transformers 5.23 (.venv): get_scheduler(name, SGD(lr=1.0), num_warmup_steps=7,
// num_training_steps=50), reading optimizer.param_groups[0]["lr"] before the k-th step() (after
// k scheduler steps), printed with repr().
TEST(LrSchedule, EqualsTransformers) {
  struct Case {
    const char* name;
    int64_t step;
    double lr;
  };
  const Case cases[] = {
      {"constant", 0, 1.0},
      {"constant", 49, 1.0},
      {"constant_with_warmup", 0, 0.0},
      {"constant_with_warmup", 3, 0.42857142857142855},
      {"constant_with_warmup", 7, 1.0},
      {"constant_with_warmup", 50, 1.0},
      {"linear", 1, 0.14285714285714285},
      {"linear", 6, 0.8571428571428571},
      {"linear", 7, 1.0},
      {"linear", 8, 0.9767441860465116},
      {"linear", 20, 0.6976744186046512},
      {"linear", 33, 0.3953488372093023},
      {"linear", 49, 0.023255813953488372},
      {"linear", 50, 0.0},
      {"cosine", 0, 0.0},
      {"cosine", 6, 0.8571428571428571},
      {"cosine", 7, 1.0},
      {"cosine", 8, 0.9986661418317758},
      {"cosine", 20, 0.7909294577789765},
      {"cosine", 33, 0.338559797614277},
      {"cosine", 49, 0.001333858168224178},
      {"cosine", 50, 0.0},
  };
  for (const Case& c : cases) {
    const LrSchedule schedule(lr_schedule_kind_from_name(c.name), 7, 50);
    EXPECT_DOUBLE_EQ(schedule.lr_at(c.step), c.lr) << c.name << " step " << c.step;
  }
  EXPECT_THROW(lr_schedule_kind_from_name("polynomial"), std::invalid_argument);
}

// TrainingArguments(warmup_steps=0.1).get_warmup_steps(55) == 6, (100) == 10; warmup_steps=5
// gives 5.
TEST(LrSchedule, WarmupBelowOneIsARatio) {
  EXPECT_EQ(warmup_steps_for(0.1, 55), 6);
  EXPECT_EQ(warmup_steps_for(0.1, 100), 10);
  EXPECT_EQ(warmup_steps_for(5, 55), 5);
  EXPECT_EQ(warmup_steps_for(0, 55), 0);
}

TEST(GradClip, EqualsPlainComputation) {
  torch::manual_seed(4);
  NamedTensors params = {
      {"a", torch::zeros({3, 5})}, {"b", torch::zeros({11})}, {"c", torch::zeros({2})}};
  params[0].second.mutable_grad() = torch::randn({3, 5}) * 3;
  params[1].second.mutable_grad() = torch::randn({11});
  const torch::Tensor ga = params[0].second.grad().clone(), gb = params[1].second.grad().clone();
  const double expected =
      std::sqrt(ga.pow(2).sum().item<double>() + gb.pow(2).sum().item<double>());
  const double total = clip_grad_norm(params, 1.0);
  EXPECT_NEAR(total, expected, 1e-5 * expected);
  const double coef = 1.0 / (expected + 1e-6);
  EXPECT_TRUE(torch::allclose(params[0].second.grad(), ga * coef, 1e-5, 1e-7));
  EXPECT_TRUE(torch::allclose(params[1].second.grad(), gb * coef, 1e-5, 1e-7));
  // Below max_norm nothing changes (the coefficient clamps to 1).
  const torch::Tensor before = params[0].second.grad().clone();
  EXPECT_NEAR(clip_grad_norm(params, 10.0), 1.0, 1e-5);
  EXPECT_TRUE(torch::equal(params[0].second.grad(), before));
}

// Random blocks at many scales, a ragged tail, all-zero blocks, exact bin edges and NaN.
torch::Tensor quantizer_input(bool is_signed, int seed) {
  torch::manual_seed(seed);
  const int64_t n = 256 * 37 + 101;
  torch::Tensor x =
      torch::randn({n}) *
      torch::pow(10.0, torch::randint(-7, 2, {n / 256 + 1})).repeat_interleave(256).narrow(0, 0, n);
  if (!is_signed) x = x * x;
  x.narrow(0, 512, 256).zero_();
  x.narrow(0, 1024, 5).zero_();
  torch::Tensor k = torch::arange(0, 256, torch::kFloat32);
  x.narrow(0, 2048, 256).copy_((k / 255) * 2 - 1);  // spans [-1, 1]
  x[3000] = std::nanf("");
  return x.view({1, n});  // the shape is kept, the blocks run over the flat order
}

TEST(AdamW8bit, QuantizerEqualsReference) {
  for (bool is_signed : {true, false}) {
    const DynamicCodebook& book = dynamic_codebook(is_signed);
    for (int seed = 0; seed < 3; ++seed) {
      const torch::Tensor x = quantizer_input(is_signed, seed);
      const Blockwise8bit fast = quantize_blockwise_8bit(x, book);
      const Blockwise8bit ref = quantize_blockwise_8bit_reference(x, book);
      EXPECT_TRUE(torch::equal(fast.codes, ref.codes)) << is_signed << " " << seed;
      EXPECT_TRUE(torch::equal(fast.absmax, ref.absmax)) << is_signed << " " << seed;
      EXPECT_TRUE(torch::equal(dequantize_blockwise_8bit(fast.codes, fast.absmax, book),
                               dequantize_blockwise_8bit_reference(ref.codes, ref.absmax, book)));
    }
  }
}

TEST(AdamW8bit, QuantizerLookupTableIsNearestCodeOfEachBin) {
  for (bool is_signed : {true, false}) {
    const DynamicCodebook& book = dynamic_codebook(is_signed);
    const torch::Tensor grid = -1.0 + torch::arange(0, 65536, torch::kFloat32) * (2.0 / 65535);
    const torch::Tensor nearest = (grid.unsqueeze(1) - book.map.unsqueeze(0)).abs().argmin(1);
    const torch::Tensor lut = book.lut.to(torch::kInt64);
    // Equal except where a bin value sits within rounding of a midpoint.
    EXPECT_LE((lut != nearest).sum().item<int64_t>(), 4) << is_signed;
    EXPECT_EQ(book.lut[32768].item<int>(), is_signed ? 131 : 7);  // s = 0 (§1.11)
  }
}

TEST(AdamW8bit, QuantizerRoundTripIsWithinHalfACodeStep) {
  const DynamicCodebook& book = dynamic_codebook(true);
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({10 * 256 + 3});
  const Blockwise8bit q = quantize_blockwise_8bit(x, book);
  const torch::Tensor back = dequantize_blockwise_8bit(q.codes, q.absmax, book);
  const torch::Tensor scale = q.absmax.repeat_interleave(256).narrow(0, 0, x.numel());
  // The widest gap of the signed map is 1/32 near |s| = 1 (linspace of 65 points in [0.1, 1]).
  EXPECT_LT(((back - x).abs() / scale).max().item<float>(), 0.5f * 0.0315f);
  EXPECT_TRUE(torch::equal(q.absmax.narrow(0, 0, 10),
                           x.narrow(0, 0, 10 * 256).view({10, 256}).abs().amax(1)));
  EXPECT_EQ(q.absmax[10].item<float>(), x.narrow(0, 10 * 256, 3).abs().max().item<float>());
}

TEST(AdamW8bit, SmallTensorsKeep32BitState) {
  torch::Tensor small = torch::randn({4095}), large = torch::randn({64, 64});
  AdamW8bit opt(NamedTensors{{"small", small}, {"large", large}});
  small.mutable_grad() = torch::randn({4095});
  large.mutable_grad() = torch::randn({64, 64});
  opt.step();
  std::map<std::string, torch::Tensor> state;
  for (const auto& [k, t] : opt.state_dict()) state[k] = t;
  EXPECT_EQ(state.at("small.state1").scalar_type(), torch::kFloat32);
  EXPECT_EQ(state.count("small.absmax1"), 0u);
  EXPECT_EQ(state.at("large.state1").scalar_type(), torch::kUInt8);
  EXPECT_EQ(state.at("large.state2").sizes(), torch::IntArrayRef({64, 64}));
  EXPECT_EQ(state.at("large.absmax2").sizes(), torch::IntArrayRef({16}));
  EXPECT_EQ(state.at("large.step").item<int64_t>(), 1);
}

// Least squares ||A x - b||^2 / n, 200 steps: at every step AdamW8bit's loss is within 1% of
// AdamW's (bitsandbytes' AdamW8bit vs torch.optim.AdamW on this problem, lr 3e-3: at most 0.33%,
// 0.01% at the end).
TEST(AdamW8bit, TracksAdamWOnLeastSquares) {
  torch::manual_seed(6);
  const torch::Tensor a = torch::randn({512, 96}), b = torch::randn({512, 64});
  const torch::Tensor x0 = torch::randn({96, 64}) * 0.1;  // 6144 elements: 8-bit state
  auto loss_of = [&](const torch::Tensor& x) { return (a.matmul(x) - b).pow(2).mean(); };
  torch::Tensor x32 = x0.clone().requires_grad_(), x8 = x0.clone().requires_grad_();
  AdamWOptions o32;
  o32.lr = 3e-3;
  o32.weight_decay = 0.0;
  AdamW8bitOptions o8;
  o8.lr = 3e-3;
  o8.weight_decay = 0.0;
  AdamW opt32(NamedTensors{{"x", x32}}, o32);
  AdamW8bit opt8(NamedTensors{{"x", x8}}, o8);
  const double initial = loss_of(x0).item<double>();
  double l32 = 0, worst = 0;
  for (int s = 0; s < 200; ++s) {
    opt32.zero_grad();
    opt8.zero_grad();
    torch::Tensor loss32 = loss_of(x32), loss8 = loss_of(x8);
    loss32.backward();
    loss8.backward();
    l32 = loss32.item<double>();
    worst = std::max(worst, std::abs(loss8.item<double>() - l32) / l32);
    opt32.step();
    opt8.step();
  }
  EXPECT_LT(l32, 0.5 * initial);  // it did train
  EXPECT_LT(worst, 0.01);
}

TEST(AdamW8bit, StateDictRoundTripContinuesTheSameTrajectory) {
  torch::manual_seed(7);
  NamedTensors straight = {{"w", torch::randn({50, 100})}, {"v", torch::randn({30})}};
  NamedTensors resumed = clone_all(straight);
  AdamW8bit a(straight), b(resumed);
  for (int s = 0; s < 3; ++s) {
    set_grads(straight, s);
    a.step();
    set_grads(resumed, s);
    b.step();
  }
  AdamW8bit c(resumed);
  c.load_state_dict(b.state_dict());
  for (int s = 3; s < 6; ++s) {
    set_grads(straight, s);
    a.step();
    set_grads(resumed, s);
    c.step();
  }
  for (size_t i = 0; i < straight.size(); ++i) {
    EXPECT_TRUE(torch::equal(straight[i].second, resumed[i].second));
  }
  const NamedTensors sa = a.state_dict(), sc = c.state_dict();
  ASSERT_EQ(sa.size(), sc.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].first, sc[i].first);
    EXPECT_TRUE(torch::equal(sa[i].second, sc[i].second)) << sa[i].first;
  }
}

TEST(AdamW8bit, PagedStateGivesTheSameBytes) {
  const torch::Tensor paged = paged_zeros({3, 5}, torch::kFloat32);
  EXPECT_TRUE(torch::equal(paged, torch::zeros({3, 5})));
  paged.fill_(2.0);  // writable
  torch::manual_seed(8);
  NamedTensors plain = {{"w", torch::randn({400, 260})}}, in_file = clone_all(plain);
  AdamW8bitOptions o;
  AdamW8bit a(plain, o);
  o.paged = true;
  AdamW8bit b(in_file, o);
  for (int s = 0; s < 3; ++s) {
    set_grads(plain, s);
    a.step();
    set_grads(in_file, s);
    b.step();
  }
  EXPECT_TRUE(torch::equal(plain[0].second, in_file[0].second));
  const NamedTensors sa = a.state_dict(), sb = b.state_dict();
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_TRUE(torch::equal(sa[i].second, sb[i].second));
}

}  // namespace
}  // namespace gemma
