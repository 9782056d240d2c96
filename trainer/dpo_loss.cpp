#include "trainer/dpo_loss.h"

#include <cmath>
#include <set>

#include "io/input_error.h"

namespace gemma {
namespace {

struct LossTypeName {
  DpoLossType type;
  const char* name;
};
constexpr LossTypeName kLossTypeNames[] = {
    {DpoLossType::kSigmoid, "sigmoid"},
    {DpoLossType::kHinge, "hinge"},
    {DpoLossType::kIpo, "ipo"},
    {DpoLossType::kExoPair, "exo_pair"},
    {DpoLossType::kNcaPair, "nca_pair"},
    {DpoLossType::kRobust, "robust"},
    {DpoLossType::kBcoPair, "bco_pair"},
    {DpoLossType::kSppoHard, "sppo_hard"},
    {DpoLossType::kAot, "aot"},
    {DpoLossType::kAotUnpaired, "aot_unpaired"},
    {DpoLossType::kApoZero, "apo_zero"},
    {DpoLossType::kApoDown, "apo_down"},
    {DpoLossType::kDiscopop, "discopop"},
    {DpoLossType::kSft, "sft"},
    {DpoLossType::kSigmoidNorm, "sigmoid_norm"},
};

struct FDivergenceName {
  FDivergence type;
  const char* name;
};
constexpr FDivergenceName kFDivergenceNames[] = {
    {FDivergence::kReverseKl, "reverse_kl"},
    {FDivergence::kForwardKl, "forward_kl"},
    {FDivergence::kJsDivergence, "js_divergence"},
    {FDivergence::kAlphaDivergence, "alpha_divergence"},
};

template <typename Table>
std::string accepted_names(const Table& table) {
  std::string out;
  for (const auto& entry : table) out += std::string(out.empty() ? "" : ", ") + entry.name;
  return out;
}

// The per-pair score s = f'(exp r) of a log-ratio r under the f-divergence (f-DPO).
torch::Tensor divergence_score(const torch::Tensor& logratio, const DpoLossOptions& o) {
  switch (o.f_divergence) {
    case FDivergence::kReverseKl:
      return logratio;
    case FDivergence::kForwardKl:
      return 1 - torch::exp(-logratio);
    case FDivergence::kJsDivergence:
      return std::log(2.0) + torch::log_sigmoid(logratio);
    case FDivergence::kAlphaDivergence: {
      const double a = o.f_alpha_divergence_coef;
      if (std::abs(a - 1.0) < 1e-6) return logratio;  // the limit: reverse KL
      // TRL clamps the exponent at 80 in float32 (and bfloat16) so exp stays finite; float64
      // (which TRL does not take) is clamped the same, in float64.
      torch::Tensor t = (a - 1.0) * logratio;
      if (t.scalar_type() != torch::kFloat64) t = t.to(torch::kFloat32);
      return (torch::exp(t.clamp_max(80.0)) - 1.0).to(logratio.scalar_type()) * (1.0 / (a - 1.0));
    }
  }
  return logratio;
}

torch::Tensor logsigmoid(const torch::Tensor& x) { return torch::log_sigmoid(x); }

}  // namespace

const char* dpo_loss_type_name(DpoLossType type) {
  for (const auto& entry : kLossTypeNames) {
    if (entry.type == type) return entry.name;
  }
  return "?";
}

DpoLossType dpo_loss_type_from_name(const std::string& name, const std::string& where) {
  for (const auto& entry : kLossTypeNames) {
    if (name == entry.name) return entry.type;
  }
  throw InputError(where + ": unknown DPO loss type \"" + name + "\" (expected one of " +
                   accepted_names(kLossTypeNames) + ")");
}

const char* f_divergence_name(FDivergence type) {
  for (const auto& entry : kFDivergenceNames) {
    if (entry.type == type) return entry.name;
  }
  return "?";
}

FDivergence f_divergence_from_name(const std::string& name, const std::string& where) {
  for (const auto& entry : kFDivergenceNames) {
    if (name == entry.name) return entry.type;
  }
  throw InputError(where + ": unknown f_divergence_type \"" + name + "\" (expected one of " +
                   accepted_names(kFDivergenceNames) + ")");
}

std::vector<std::string> check_dpo_loss_options(const DpoLossOptions& o, bool use_weighting) {
  const std::set<DpoLossType> types(o.loss_types.begin(), o.loss_types.end());
  if (o.loss_types.empty()) throw InputError("training.loss_type: no DPO loss type given");
  if (!o.loss_weights.empty() && o.loss_weights.size() != o.loss_types.size()) {
    throw InputError("training.loss_weights: " + std::to_string(o.loss_weights.size()) +
                     " weights for " + std::to_string(o.loss_types.size()) +
                     " loss types; give one weight per training.loss_type entry");
  }
  if (o.f_divergence != FDivergence::kReverseKl) {
    static const std::set<DpoLossType> kWithDivergence = {
        DpoLossType::kSigmoid,  DpoLossType::kSigmoidNorm, DpoLossType::kHinge,
        DpoLossType::kIpo,      DpoLossType::kExoPair,     DpoLossType::kRobust,
        DpoLossType::kDiscopop, DpoLossType::kSft};
    for (const DpoLossType t : types) {
      if (!kWithDivergence.count(t)) {
        throw InputError(std::string("training.f_divergence_type: ") +
                         f_divergence_name(o.f_divergence) +
                         " is only defined for the loss "
                         "types discopop, exo_pair, hinge, ipo, robust, sft, sigmoid and "
                         "sigmoid_norm, not for " +
                         dpo_loss_type_name(t) + "; use reverse_kl with it");
      }
    }
  }
  if (use_weighting && (types.count(DpoLossType::kAot) || types.count(DpoLossType::kAotUnpaired))) {
    throw InputError(
        "training.use_weighting: WPO weighting is not defined for aot and aot_unpaired (they sort "
        "the pairs, so the per-pair weights would not line up)");
  }
  if (types.count(DpoLossType::kExoPair) && o.label_smoothing == 0.0) {
    throw InputError(
        "training.label_smoothing: exo_pair needs a label_smoothing above 0 (the EXO paper uses "
        "1e-3)");
  }
  std::vector<std::string> warnings;
  if (types.count(DpoLossType::kRobust) && !(o.label_smoothing >= 0.0 && o.label_smoothing < 0.5)) {
    warnings.push_back(
        "training.label_smoothing should lie in [0, 0.5) for the robust loss; it is " +
        std::to_string(o.label_smoothing));
  }
  return warnings;
}

torch::Tensor dpo_loss(const DpoPairLogps& p, const DpoLossOptions& o) {
  const double beta = o.beta;
  const double eps = o.label_smoothing;
  const torch::Tensor chosen_logratio = p.chosen - p.ref_chosen;
  const torch::Tensor rejected_logratio = p.rejected - p.ref_rejected;
  const torch::Tensor chosen_score = divergence_score(chosen_logratio, o);
  const torch::Tensor rejected_score = divergence_score(rejected_logratio, o);
  const torch::Tensor delta = chosen_score - rejected_score;
  // Length-averaged scores (ipo, sigmoid_norm): token counts clamped at 1 as TRL does.
  const auto averaged_delta = [&] {
    return chosen_score / p.chosen_tokens.to(chosen_score.scalar_type()).clamp_min(1.0) -
           rejected_score / p.rejected_tokens.to(rejected_score.scalar_type()).clamp_min(1.0);
  };
  const auto smoothed = [&](const torch::Tensor& d) {
    return -logsigmoid(beta * d) * (1 - eps) - logsigmoid(-beta * d) * eps;
  };

  torch::Tensor total;
  for (size_t k = 0; k < o.loss_types.size(); ++k) {
    torch::Tensor per_pair;
    switch (o.loss_types[k]) {
      case DpoLossType::kSigmoid:
        per_pair = -logsigmoid(beta * delta);
        break;
      case DpoLossType::kHinge:
        per_pair = torch::relu(1 - beta * delta);
        break;
      case DpoLossType::kIpo:
        per_pair = (averaged_delta() - 1 / (2 * beta)).pow(2);
        break;
      case DpoLossType::kExoPair: {
        // KL(softmax over {chosen, rejected} of β·Δ || [1 − ε, ε]), written with logsigmoid.
        const torch::Tensor x = beta * delta;
        per_pair = torch::sigmoid(x) * (logsigmoid(x) - std::log1p(-eps)) +
                   torch::sigmoid(-x) * (logsigmoid(-x) - std::log(eps));
        break;
      }
      case DpoLossType::kNcaPair: {
        const torch::Tensor w = beta * chosen_logratio, l = beta * rejected_logratio;
        per_pair = -logsigmoid(w) - 0.5 * logsigmoid(-w) - 0.5 * logsigmoid(-l);
        break;
      }
      case DpoLossType::kRobust:
        per_pair = (-(1 - eps) * logsigmoid(beta * delta) + eps * logsigmoid(-beta * delta)) /
                   (1 - 2 * eps);
        break;
      case DpoLossType::kBcoPair:
        per_pair = -logsigmoid(beta * chosen_logratio) - logsigmoid(-beta * rejected_logratio);
        break;
      case DpoLossType::kSppoHard:
        per_pair = (chosen_logratio - 0.5 / beta).pow(2) + (rejected_logratio + 0.5 / beta).pow(2);
        break;
      case DpoLossType::kAot: {
        // Sorted over the micro-batch, policy and reference margins separately.
        const torch::Tensor policy = std::get<0>(torch::sort(p.chosen - p.rejected, 0));
        const torch::Tensor ref = std::get<0>(torch::sort(p.ref_chosen - p.ref_rejected, 0));
        per_pair = smoothed(policy - ref);
        break;
      }
      case DpoLossType::kAotUnpaired: {
        const torch::Tensor w = std::get<0>(torch::sort(chosen_logratio, 0));
        const torch::Tensor l = std::get<0>(torch::sort(rejected_logratio, 0));
        per_pair = smoothed(w - l);
        break;
      }
      case DpoLossType::kApoZero:
        per_pair =
            1 - torch::sigmoid(beta * chosen_logratio) + torch::sigmoid(beta * rejected_logratio);
        break;
      case DpoLossType::kApoDown:
        per_pair = torch::sigmoid(beta * chosen_logratio) + 1 -
                   torch::sigmoid(beta * (chosen_logratio - rejected_logratio));
        break;
      case DpoLossType::kDiscopop: {
        const torch::Tensor x = beta * delta;
        const torch::Tensor mix = torch::sigmoid(x / o.discopop_tau);
        per_pair = -logsigmoid(x) * (1 - mix) + torch::exp(-x) * mix;
        break;
      }
      case DpoLossType::kSft:
        per_pair = p.sft_loss.expand({p.chosen.size(0)});
        break;
      case DpoLossType::kSigmoidNorm:
        per_pair = -logsigmoid(beta * averaged_delta());
        break;
    }
    if (p.weights.defined()) per_pair = per_pair * p.weights;
    const double weight = o.loss_weights.empty() ? 1.0 : o.loss_weights[k];
    const torch::Tensor term = per_pair.mean() * weight;
    total = total.defined() ? total + term : term;
  }
  return total;
}

}  // namespace gemma
