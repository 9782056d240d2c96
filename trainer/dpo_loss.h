// DPO's losses as trl 1.16 computes them (DPOTrainer._compute_loss), from per-pair sequence
// log-probabilities: the policy's and the reference's, summed over each completion. Separate from
// the model and the batch so that every loss type is tested on small hand-made tensors; the DPO
// objective feeds it what the chunked LM head produced.
#pragma once

#include <string>
#include <vector>

#include <torch/torch.h>

namespace gemma {

// DPOConfig.loss_type's values, in TRL's order.
enum class DpoLossType {
  kSigmoid,
  kHinge,
  kIpo,
  kExoPair,
  kNcaPair,
  kRobust,
  kBcoPair,
  kSppoHard,
  kAot,
  kAotUnpaired,
  kApoZero,
  kApoDown,
  kDiscopop,
  kSft,
  kSigmoidNorm,
};

// DPOConfig.f_divergence_type: how a log-ratio r becomes the score the pair loss compares.
enum class FDivergence { kReverseKl, kForwardKl, kJsDivergence, kAlphaDivergence };

// TRL's spelling ("sigmoid", "sigmoid_norm", ...; "reverse_kl", ...) and back; the parsers throw
// InputError naming `where` and the accepted values.
const char* dpo_loss_type_name(DpoLossType type);
DpoLossType dpo_loss_type_from_name(const std::string& name, const std::string& where);
const char* f_divergence_name(FDivergence type);
FDivergence f_divergence_from_name(const std::string& name, const std::string& where);

struct DpoLossOptions {
  double beta = 0.1;
  std::vector<DpoLossType> loss_types = {DpoLossType::kSigmoid};
  std::vector<double> loss_weights;  // empty: 1.0 for each loss type
  double label_smoothing = 0.0;      // robust, exo_pair, aot, aot_unpaired
  FDivergence f_divergence = FDivergence::kReverseKl;
  double f_alpha_divergence_coef = 0.5;
  double discopop_tau = 0.05;
};

// Throws InputError (naming the recipe keys) where TRL's DPOConfig or DPOTrainer raises at init:
// loss_weights of another length, exo_pair with label_smoothing 0, an f-divergence other than
// reverse KL with a loss type it has no form for, use_weighting with aot or aot_unpaired. Returns
// the warnings TRL logs (robust with label_smoothing outside [0, 0.5)).
std::vector<std::string> check_dpo_loss_options(const DpoLossOptions& options, bool use_weighting);

// One micro-batch of B pairs, each tensor [B] (float32 or float64; `sft_loss` a scalar).
struct DpoPairLogps {
  torch::Tensor chosen;         // log πθ(y_w | x), summed over the completion
  torch::Tensor rejected;       // log πθ(y_l | x)
  torch::Tensor ref_chosen;     // log πref(y_w | x)
  torch::Tensor ref_rejected;   // log πref(y_l | x)
  torch::Tensor chosen_tokens;  // completion token counts (ipo, sigmoid_norm)
  torch::Tensor rejected_tokens;
  torch::Tensor sft_loss;  // mean −log p over the chosen completion tokens (sft)
  torch::Tensor weights;   // WPO's w_w · w_l per pair (use_weighting); undefined: none
};

// Σ_k loss_weights[k] · mean over the pairs of loss_types[k]'s per-pair loss. Differentiable in
// `chosen`, `rejected` and `sft_loss`.
torch::Tensor dpo_loss(const DpoPairLogps& pairs, const DpoLossOptions& options);

}  // namespace gemma
