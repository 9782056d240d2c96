// KTO's loss as trl 1.16 computes it (KTOTrainer._compute_loss): unpaired completions, each
// desirable or not, scored by their log-ratio against a reference point z, the detached KL
// estimate from mismatched prompt/completion pairs. Separate from the model and the batch so that
// it is tested on small hand-made tensors.
#pragma once

#include <string>

#include <torch/torch.h>

namespace gemma {

enum class KtoLossType { kKto, kApoZeroUnpaired };

// "kto", "apo_zero_unpaired" and back; the parser throws InputError naming `where`.
const char* kto_loss_type_name(KtoLossType type);
KtoLossType kto_loss_type_from_name(const std::string& name, const std::string& where);

struct KtoLossOptions {
  double beta = 0.1;
  double desirable_weight = 1.0;
  double undesirable_weight = 1.0;
  KtoLossType loss_type = KtoLossType::kKto;
};

// The reference point z of one micro-batch: mean of log πθ(y'|x) − log πref(y'|x) over its KL
// pairs, [N] each, detached. Across ranks TRL averages these means and then clamps at 0: a
// caller with several ranks passes the mean of the ranks' values to kto_clamped_kl().
torch::Tensor kto_kl_mean(const torch::Tensor& kl_logps, const torch::Tensor& ref_kl_logps);
torch::Tensor kto_clamped_kl(const torch::Tensor& mean_over_ranks);

// One micro-batch of N completions, each tensor [N]: summed completion log-probs of the policy
// and the reference, and whether each is desirable (bool).
struct KtoRowLogps {
  torch::Tensor logps;
  torch::Tensor ref_logps;
  torch::Tensor desirable;
};

// nanmean over the rows of λ_D·(1 − σ(β(r − z))) for desirable rows and λ_U·(1 − σ(β(z − r)))
// for the others (apo_zero_unpaired: 1 − σ(βr) and σ(βr), z unused). `kl` is a scalar tensor.
// Differentiable in `rows.logps`.
torch::Tensor kto_loss(const KtoRowLogps& rows, const torch::Tensor& kl,
                       const KtoLossOptions& options);

// TRL's check of the weights against the data's balance (KTOTrainer._prepare_dataset, from the
// KTO paper's eq. 8): with unequal counts (each at least 1), desirable_weight should lie in
// [n_U·λ_U/n_D, 1.33·n_U·λ_U/n_D] or undesirable_weight in [n_D·λ_D/(1.33·n_U), n_D·λ_D/n_U],
// bounds rounded to 2 decimals. Returns a warning naming both ranges when neither holds, else "".
std::string kto_weight_warning(int64_t desirable_count, int64_t undesirable_count,
                               const KtoLossOptions& options);

}  // namespace gemma
