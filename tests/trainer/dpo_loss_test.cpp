// DPO and KTO losses against the formulas of trl 1.16 worked out pair by pair in plain double
// arithmetic (no tensors), on random log-probabilities, plus a few values computed by hand.
#include "trainer/dpo_loss.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "io/input_error.h"
#include "trainer/kto_loss.h"

namespace gemma {
namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double logsigmoid(double x) { return -std::log1p(std::exp(-x)); }

std::vector<double> values(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kFloat64).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

// Random pairs: policy and reference log-probs of a few dozen tokens, counts from 1 to 20.
struct Pairs {
  DpoPairLogps logps;
  std::vector<double> w, l, rw, rl, nw, nl;
  double sft = 0;
};

Pairs random_pairs(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  Pairs p;
  p.logps.chosen = -torch::rand({n}, opts) * 40 - 1;
  p.logps.rejected = -torch::rand({n}, opts) * 40 - 1;
  p.logps.ref_chosen = p.logps.chosen + torch::randn({n}, opts) * 3;
  p.logps.ref_rejected = p.logps.rejected + torch::randn({n}, opts) * 3;
  p.logps.chosen_tokens = torch::randint(1, 21, {n}, torch::kInt64);
  p.logps.rejected_tokens = torch::randint(1, 21, {n}, torch::kInt64);
  p.logps.sft_loss = torch::rand({}, opts) * 3;
  p.w = values(p.logps.chosen);
  p.l = values(p.logps.rejected);
  p.rw = values(p.logps.ref_chosen);
  p.rl = values(p.logps.ref_rejected);
  p.nw = values(p.logps.chosen_tokens);
  p.nl = values(p.logps.rejected_tokens);
  p.sft = p.logps.sft_loss.item<double>();
  return p;
}

// The mean over pairs of `per_pair(i)`.
double mean_of(size_t n, const std::function<double(size_t)>& per_pair) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += per_pair(i);
  return s / static_cast<double>(n);
}

double loss_of(const Pairs& p, DpoLossType type, DpoLossOptions o = {}) {
  o.loss_types = {type};
  return dpo_loss(p.logps, o).item<double>();
}

TEST(DpoLoss, EveryLossTypeMatchesItsFormula) {
  const Pairs p = random_pairs(7, 3);
  const size_t n = p.w.size();
  const double b = 0.1;
  const auto rw = [&](size_t i) { return p.w[i] - p.rw[i]; };
  const auto rl = [&](size_t i) { return p.l[i] - p.rl[i]; };
  const auto d = [&](size_t i) { return rw(i) - rl(i); };
  const auto avg = [&](size_t i) { return rw(i) / p.nw[i] - rl(i) / p.nl[i]; };

  EXPECT_NEAR(loss_of(p, DpoLossType::kSigmoid),
              mean_of(n, [&](size_t i) { return -logsigmoid(b * d(i)); }), 1e-12);
  EXPECT_NEAR(loss_of(p, DpoLossType::kHinge),
              mean_of(n, [&](size_t i) { return std::max(0.0, 1 - b * d(i)); }), 1e-12);
  EXPECT_NEAR(loss_of(p, DpoLossType::kIpo),
              mean_of(n, [&](size_t i) { return std::pow(avg(i) - 1 / (2 * b), 2); }), 1e-10);
  EXPECT_NEAR(loss_of(p, DpoLossType::kSigmoidNorm),
              mean_of(n, [&](size_t i) { return -logsigmoid(b * avg(i)); }), 1e-12);
  EXPECT_NEAR(loss_of(p, DpoLossType::kNcaPair),
              mean_of(n,
                      [&](size_t i) {
                        return -logsigmoid(b * rw(i)) - 0.5 * logsigmoid(-b * rw(i)) -
                               0.5 * logsigmoid(-b * rl(i));
                      }),
              1e-12);
  EXPECT_NEAR(loss_of(p, DpoLossType::kBcoPair),
              mean_of(n, [&](size_t i) { return -logsigmoid(b * rw(i)) - logsigmoid(-b * rl(i)); }),
              1e-12);
  EXPECT_NEAR(
      loss_of(p, DpoLossType::kSppoHard),
      mean_of(
          n, [&](size_t i) { return std::pow(rw(i) - 0.5 / b, 2) + std::pow(rl(i) + 0.5 / b, 2); }),
      1e-9);
  EXPECT_NEAR(loss_of(p, DpoLossType::kApoZero),
              mean_of(n, [&](size_t i) { return 1 - sigmoid(b * rw(i)) + sigmoid(b * rl(i)); }),
              1e-12);
  EXPECT_NEAR(
      loss_of(p, DpoLossType::kApoDown),
      mean_of(n, [&](size_t i) { return sigmoid(b * rw(i)) + 1 - sigmoid(b * (rw(i) - rl(i))); }),
      1e-12);
  EXPECT_NEAR(loss_of(p, DpoLossType::kDiscopop),
              mean_of(n,
                      [&](size_t i) {
                        const double x = b * d(i), mix = sigmoid(x / 0.05);
                        return -logsigmoid(x) * (1 - mix) + std::exp(-x) * mix;
                      }),
              1e-12);
  EXPECT_NEAR(loss_of(p, DpoLossType::kSft), p.sft, 1e-12);

  DpoLossOptions smooth;
  smooth.label_smoothing = 0.2;
  const double e = 0.2;
  EXPECT_NEAR(loss_of(p, DpoLossType::kRobust, smooth),
              mean_of(n,
                      [&](size_t i) {
                        return (-(1 - e) * logsigmoid(b * d(i)) + e * logsigmoid(-b * d(i))) /
                               (1 - 2 * e);
                      }),
              1e-12);
  EXPECT_NEAR(loss_of(p, DpoLossType::kExoPair, smooth),
              mean_of(n,
                      [&](size_t i) {
                        const double x = b * d(i);
                        return sigmoid(x) * (logsigmoid(x) - std::log(1 - e)) +
                               sigmoid(-x) * (logsigmoid(-x) - std::log(e));
                      }),
              1e-12);
  // aot: policy and reference margins sorted separately over the micro-batch.
  std::vector<double> policy(n), ref(n), sorted_w(n), sorted_l(n);
  for (size_t i = 0; i < n; ++i) {
    policy[i] = p.w[i] - p.l[i];
    ref[i] = p.rw[i] - p.rl[i];
    sorted_w[i] = rw(i);
    sorted_l[i] = rl(i);
  }
  for (auto* v : {&policy, &ref, &sorted_w, &sorted_l}) std::sort(v->begin(), v->end());
  const auto smoothed = [&](double x) {
    return -logsigmoid(b * x) * (1 - e) - logsigmoid(-b * x) * e;
  };
  EXPECT_NEAR(loss_of(p, DpoLossType::kAot, smooth),
              mean_of(n, [&](size_t i) { return smoothed(policy[i] - ref[i]); }), 1e-12);
  EXPECT_NEAR(loss_of(p, DpoLossType::kAotUnpaired, smooth),
              mean_of(n, [&](size_t i) { return smoothed(sorted_w[i] - sorted_l[i]); }), 1e-12);
}

// Worked by hand: one pair with log-ratios r_w = 2, r_l = -3 and β = 0.5, so βΔ = 2.5.
TEST(DpoLoss, HandComputedValues) {
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  DpoPairLogps p;
  p.chosen = torch::tensor({-10.0}, opts);
  p.ref_chosen = torch::tensor({-12.0}, opts);
  p.rejected = torch::tensor({-20.0}, opts);
  p.ref_rejected = torch::tensor({-17.0}, opts);
  p.chosen_tokens = torch::tensor({4});
  p.rejected_tokens = torch::tensor({5});
  DpoLossOptions o;
  o.beta = 0.5;
  o.loss_types = {DpoLossType::kSigmoid};
  EXPECT_NEAR(dpo_loss(p, o).item<double>(), std::log1p(std::exp(-2.5)), 1e-12);  // 0.0788...
  o.loss_types = {DpoLossType::kHinge};
  EXPECT_NEAR(dpo_loss(p, o).item<double>(), 0.0, 1e-12);  // 1 − 2.5 < 0
  o.loss_types = {DpoLossType::kIpo};  // (2/4 − (−3)/5 − 1)² = 0.1² = 0.01
  EXPECT_NEAR(dpo_loss(p, o).item<double>(), 0.01, 1e-12);
  o.loss_types = {DpoLossType::kSppoHard};  // (2 − 1)² + (−3 + 1)² = 5
  EXPECT_NEAR(dpo_loss(p, o).item<double>(), 5.0, 1e-12);
  // Two loss types with weights: 0.5·hinge + 2·sppo_hard = 10.
  o.loss_types = {DpoLossType::kHinge, DpoLossType::kSppoHard};
  o.loss_weights = {0.5, 2.0};
  EXPECT_NEAR(dpo_loss(p, o).item<double>(), 10.0, 1e-12);
}

TEST(DpoLoss, FDivergenceScores) {
  const Pairs p = random_pairs(5, 11);
  const size_t n = p.w.size();
  const double b = 0.1;
  const auto score = [&](FDivergence f, double r) {
    switch (f) {
      case FDivergence::kForwardKl:
        return 1 - std::exp(-r);
      case FDivergence::kJsDivergence:
        return std::log(2.0) + logsigmoid(r);
      case FDivergence::kAlphaDivergence:
        return (std::exp(std::min((0.3 - 1) * r, 80.0)) - 1) / (0.3 - 1);
      case FDivergence::kReverseKl:
        break;
    }
    return r;
  };
  for (const FDivergence f :
       {FDivergence::kForwardKl, FDivergence::kJsDivergence, FDivergence::kAlphaDivergence}) {
    DpoLossOptions o;
    o.f_divergence = f;
    o.f_alpha_divergence_coef = 0.3;
    const double want = mean_of(n, [&](size_t i) {
      return -logsigmoid(b * (score(f, p.w[i] - p.rw[i]) - score(f, p.l[i] - p.rl[i])));
    });
    EXPECT_NEAR(loss_of(p, DpoLossType::kSigmoid, o), want, 1e-12) << f_divergence_name(f);
  }
  // α = 1 is the reverse-KL limit.
  DpoLossOptions limit;
  limit.f_divergence = FDivergence::kAlphaDivergence;
  limit.f_alpha_divergence_coef = 1.0;
  EXPECT_NEAR(loss_of(p, DpoLossType::kSigmoid, limit), loss_of(p, DpoLossType::kSigmoid), 1e-12);
}

TEST(DpoLoss, WeightsMultiplyEachPair) {
  Pairs p = random_pairs(4, 5);
  p.logps.weights = torch::tensor({0.5, 1.0, 2.0, 0.25}, torch::kFloat64);
  const std::vector<double> w = {0.5, 1.0, 2.0, 0.25};
  const double want = mean_of(4, [&](size_t i) {
    return -logsigmoid(0.1 * ((p.w[i] - p.rw[i]) - (p.l[i] - p.rl[i]))) * w[i];
  });
  EXPECT_NEAR(loss_of(p, DpoLossType::kSigmoid), want, 1e-12);
}

TEST(DpoLoss, GradientsReachThePolicyLogps) {
  Pairs p = random_pairs(3, 9);
  p.logps.chosen.requires_grad_(true);
  p.logps.rejected.requires_grad_(true);
  DpoLossOptions o;
  dpo_loss(p.logps, o).backward();
  // d/dw of −log σ(β(w − rw − l + rl)) = −β·σ(−βΔ) / B.
  for (size_t i = 0; i < 3; ++i) {
    const double delta = (p.w[i] - p.rw[i]) - (p.l[i] - p.rl[i]);
    EXPECT_NEAR(p.logps.chosen.grad()[i].item<double>(), -0.1 * sigmoid(-0.1 * delta) / 3, 1e-12);
    EXPECT_NEAR(p.logps.rejected.grad()[i].item<double>(), 0.1 * sigmoid(-0.1 * delta) / 3, 1e-12);
  }
}

std::string option_error(const DpoLossOptions& o, bool use_weighting = false) {
  try {
    check_dpo_loss_options(o, use_weighting);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(DpoLoss, OptionsTrlRefusesAreRefused) {
  DpoLossOptions o;
  o.loss_types = {DpoLossType::kSigmoid, DpoLossType::kSft};
  o.loss_weights = {1.0};
  EXPECT_NE(option_error(o).find("training.loss_weights: 1 weights for 2 loss types"),
            std::string::npos);
  o.loss_weights = {1.0, 0.5};
  EXPECT_EQ(option_error(o), "");
  o.loss_types = {DpoLossType::kExoPair};
  o.loss_weights.clear();
  EXPECT_NE(option_error(o).find("exo_pair needs a label_smoothing above 0"), std::string::npos);
  o.label_smoothing = 1e-3;
  EXPECT_EQ(option_error(o), "");
  o.loss_types = {DpoLossType::kNcaPair};
  o.f_divergence = FDivergence::kForwardKl;
  EXPECT_NE(option_error(o).find("not for nca_pair"), std::string::npos);
  o.f_divergence = FDivergence::kReverseKl;
  o.loss_types = {DpoLossType::kAot};
  EXPECT_NE(option_error(o, true).find("training.use_weighting"), std::string::npos);
  o.loss_types = {DpoLossType::kRobust};
  o.label_smoothing = 0.7;
  EXPECT_EQ(check_dpo_loss_options(o, false).size(), 1u);  // TRL only warns
  EXPECT_EQ(dpo_loss_type_from_name("sigmoid_norm", "x"), DpoLossType::kSigmoidNorm);
  EXPECT_THROW(dpo_loss_type_from_name("simpo", "training.loss_type"), InputError);
  EXPECT_EQ(std::string(dpo_loss_type_name(DpoLossType::kAotUnpaired)), "aot_unpaired");
}

TEST(KtoLoss, DesirableAndUndesirableRowsAgainstTheKlPoint) {
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  torch::manual_seed(4);
  KtoRowLogps rows;
  rows.logps = -torch::rand({6}, opts) * 30;
  rows.ref_logps = rows.logps + torch::randn({6}, opts) * 2;
  rows.desirable = torch::tensor({true, false, true, true, false, false});
  const torch::Tensor kl_logps = -torch::rand({6}, opts) * 30;
  const torch::Tensor ref_kl_logps = kl_logps - torch::rand({6}, opts);  // policy above: z > 0
  const torch::Tensor z = kto_clamped_kl(kto_kl_mean(kl_logps, ref_kl_logps));
  const double zv = z.item<double>();
  EXPECT_NEAR(zv, (kl_logps - ref_kl_logps).mean().item<double>(), 1e-12);
  EXPECT_GT(zv, 0);
  EXPECT_EQ(kto_clamped_kl(torch::tensor(-0.5, opts)).item<double>(), 0.0);

  KtoLossOptions o;
  o.beta = 0.2;
  o.desirable_weight = 1.3;
  o.undesirable_weight = 0.7;
  const std::vector<double> lp = values(rows.logps), rp = values(rows.ref_logps);
  const std::vector<bool> good = {true, false, true, true, false, false};
  double sum = 0, sum_apo = 0;
  for (size_t i = 0; i < 6; ++i) {
    const double r = lp[i] - rp[i];
    sum += good[i] ? 1.3 * (1 - sigmoid(0.2 * (r - zv))) : 0.7 * (1 - sigmoid(0.2 * (zv - r)));
    sum_apo += good[i] ? 1.3 * (1 - sigmoid(0.2 * r)) : 0.7 * sigmoid(0.2 * r);
  }
  EXPECT_NEAR(kto_loss(rows, z, o).item<double>(), sum / 6, 1e-12);
  o.loss_type = KtoLossType::kApoZeroUnpaired;
  EXPECT_NEAR(kto_loss(rows, z, o).item<double>(), sum_apo / 6, 1e-12);
}

// By hand: one desirable row with r = 1, z = 0.5, β = 2: 1 − σ(1) = 0.2689...
TEST(KtoLoss, HandComputedValue) {
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  KtoRowLogps rows{torch::tensor({-3.0}, opts), torch::tensor({-4.0}, opts), torch::tensor({true})};
  KtoLossOptions o;
  o.beta = 2.0;
  EXPECT_NEAR(kto_loss(rows, torch::tensor(0.5, opts), o).item<double>(), 1 - sigmoid(1.0), 1e-12);
}

TEST(KtoLoss, WeightWarningFollowsTrlsBand) {
  KtoLossOptions o;  // both weights 1
  EXPECT_EQ(kto_weight_warning(10, 10, o), "");
  // 100 desirable, 50 undesirable: desirable_weight in [0.5, 0.67] (Python's round(0.665, 2))
  // or undesirable_weight in [1.5, 2].
  const std::string w = kto_weight_warning(100, 50, o);
  EXPECT_NE(w.find("training.desirable_weight in [0.5, 0.67]"), std::string::npos) << w;
  EXPECT_NE(w.find("training.undesirable_weight in [1.5, 2]"), std::string::npos) << w;
  o.undesirable_weight = 1.8;
  EXPECT_EQ(kto_weight_warning(100, 50, o), "");
  EXPECT_THROW(kto_loss_type_from_name("bco", "training.loss_type"), InputError);
}

}  // namespace
}  // namespace gemma
