#include "trainer/kto_loss.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "io/input_error.h"

namespace gemma {
namespace {

// Python's round(x, 2) for the bounds TRL compares with: rounding of x's exact binary value
// (0.665 is a little above 0.665 and becomes 0.67), which printf's %.2f does as well.
double round2(double x) {
  char text[64];
  std::snprintf(text, sizeof text, "%.2f", x);
  return std::strtod(text, nullptr);
}

}  // namespace

const char* kto_loss_type_name(KtoLossType type) {
  return type == KtoLossType::kKto ? "kto" : "apo_zero_unpaired";
}

KtoLossType kto_loss_type_from_name(const std::string& name, const std::string& where) {
  if (name == "kto") return KtoLossType::kKto;
  if (name == "apo_zero_unpaired") return KtoLossType::kApoZeroUnpaired;
  throw InputError(where + ": unknown KTO loss type \"" + name +
                   "\" (expected kto or apo_zero_unpaired)");
}

torch::Tensor kto_kl_mean(const torch::Tensor& kl_logps, const torch::Tensor& ref_kl_logps) {
  return (kl_logps - ref_kl_logps).mean().detach();
}

torch::Tensor kto_clamped_kl(const torch::Tensor& mean_over_ranks) {
  return mean_over_ranks.detach().clamp_min(0.0);
}

torch::Tensor kto_loss(const KtoRowLogps& rows, const torch::Tensor& kl,
                       const KtoLossOptions& options) {
  const double beta = options.beta;
  const torch::Tensor desirable = rows.desirable.to(torch::kBool);
  const torch::Tensor logratio = rows.logps - rows.ref_logps;
  const torch::Tensor chosen = logratio.index({desirable});
  const torch::Tensor rejected = logratio.index({desirable.logical_not()});
  torch::Tensor chosen_losses, rejected_losses;
  if (options.loss_type == KtoLossType::kKto) {
    chosen_losses = 1 - torch::sigmoid(beta * (chosen - kl));
    rejected_losses = 1 - torch::sigmoid(beta * (kl - rejected));
  } else {
    chosen_losses = 1 - torch::sigmoid(beta * chosen);
    rejected_losses = torch::sigmoid(beta * rejected);
  }
  return torch::nanmean(torch::cat(
      {options.desirable_weight * chosen_losses, options.undesirable_weight * rejected_losses}));
}

std::string kto_weight_warning(int64_t desirable_count, int64_t undesirable_count,
                               const KtoLossOptions& o) {
  const auto n_d = static_cast<double>(std::max<int64_t>(desirable_count, 1));
  const auto n_u = static_cast<double>(std::max<int64_t>(undesirable_count, 1));
  if (n_d == n_u) return "";
  const double d_lo = round2(n_u * o.undesirable_weight / n_d);
  const double d_hi = round2(n_u * o.undesirable_weight / n_d * 1.33);
  const double u_lo = round2(n_d * o.desirable_weight / n_u / 1.33);
  const double u_hi = round2(n_d * o.desirable_weight / n_u);
  const bool d_ok = d_lo <= o.desirable_weight && o.desirable_weight <= d_hi;
  const bool u_ok = u_lo <= o.undesirable_weight && o.undesirable_weight <= u_hi;
  if (d_ok || u_ok) return "";
  std::ostringstream out;
  out << "the data has " << desirable_count << " desirable and " << undesirable_count
      << " undesirable rows, and the loss weights do not balance them (KTO paper, eq. 8): set "
         "EITHER training.desirable_weight in ["
      << d_lo << ", " << d_hi << "] OR training.undesirable_weight in [" << u_lo << ", " << u_hi
      << "], not both";
  return out.str();
}

}  // namespace gemma
