// The causal-LM loss, and the per-sequence log-probabilities DPO and KTO need, over Gemma's
// 262144-token vocabulary without ever holding the [tokens, vocab] float32 logits (about 1 MB a
// token, §5.2): lm_head, final softcap and log-softmax run chunk by chunk of tokens, and the
// backward pass recomputes each chunk's logits instead of saving them, unless the loss can take its
// gradient in the forward (a frozen lm_head: fused linear cross-entropy, one lm_head product less).
#pragma once

#include <optional>

#include <torch/torch.h>

namespace gemma {

constexpr int64_t kIgnoreIndex = -100;

// Mean cross-entropy over the tokens whose label is not kIgnoreIndex, of
// softcap(hidden · lm_headᵀ) in float32. hidden [N, H], lm_head [V, H], labels [N] (already
// shifted). Gradients reach `hidden` and `lm_head`.
torch::Tensor chunked_causal_lm_loss(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                     const torch::Tensor& labels, std::optional<double> softcap,
                                     int64_t chunk_tokens = 1024);

// TRL's token metrics of a loss evaluation, over the counted tokens: how many there were, how
// many the head's argmax predicts (first maximum on ties), and the sum of the entropies of the
// predicted distributions.
struct TokenStats {
  int64_t count = 0;
  int64_t correct = 0;
  double entropy_sum = 0;
};

// Σ -log p(label) over the counted tokens (not divided), as chunked_causal_lm_loss computes it,
// so a trainer can divide by the loss tokens of a whole accumulation window; fills `stats` from
// the same chunks when given.
torch::Tensor chunked_causal_lm_loss_sum(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                         const torch::Tensor& labels, std::optional<double> softcap,
                                         int64_t chunk_tokens = 1024, TokenStats* stats = nullptr);

// The same loss computed in one piece: the oracle for the chunked one.
torch::Tensor causal_lm_loss_reference(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                       const torch::Tensor& labels, std::optional<double> softcap);

// Log-probabilities of whole sequences under the model, each [B]: `sum` the sum over the counted
// tokens of log p(label) (float32; float64 for float64 inputs), `count` how many tokens were
// counted (int64). A sequence with no counted token has sum 0 and count 0.
struct SequenceLogprobs {
  torch::Tensor sum;
  torch::Tensor count;
};

// For each sequence b, Σ_t log softmax(softcap(hidden[b, t] · lm_headᵀ))[labels[b, t]] over the
// t whose label is not kIgnoreIndex. hidden [B, T, H] is already aligned (hidden[b, t] predicts
// labels[b, t]), lm_head [V, H], labels [B, T]. Gradients reach `hidden` and `lm_head` (the
// latter only when it requires grad).
SequenceLogprobs chunked_sequence_logprobs(const torch::Tensor& hidden,
                                           const torch::Tensor& lm_head,
                                           const torch::Tensor& labels,
                                           std::optional<double> softcap,
                                           int64_t chunk_tokens = 1024);

// The same in one piece (log_softmax over [B, T, V] and gather): the oracle for the chunked one.
SequenceLogprobs sequence_logprobs_reference(const torch::Tensor& hidden,
                                             const torch::Tensor& lm_head,
                                             const torch::Tensor& labels,
                                             std::optional<double> softcap);

// What TRL's fused LM head reports per token besides the log-probability (qlora-formats.md
// §4.5), each [B, T] and detached: the entropy of the predicted distribution, the mean over the
// vocabulary of the (softcapped) logits, whether the label is the first argmax, and log Σ_v p_v²
// (WPO's weights). Zero (false) where the label is kIgnoreIndex.
struct TokenDetails {
  torch::Tensor entropy;
  torch::Tensor mean_logit;
  torch::Tensor is_top1;
  torch::Tensor log_sum_sq_probs;
};

// Per-token log p(labels[b, t]) [B, T], 0 where the label is kIgnoreIndex, hidden [B, T, H]
// aligned with labels [B, T] as for chunked_sequence_logprobs; gradients reach `hidden` and
// `lm_head` (when it requires grad) through any function of the result. Fills `details` when
// given, from the same chunks.
torch::Tensor chunked_token_logprobs(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                     const torch::Tensor& labels, std::optional<double> softcap,
                                     int64_t chunk_tokens = 1024, TokenDetails* details = nullptr);

// The same in one piece: the oracle for the chunked one.
torch::Tensor token_logprobs_reference(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                       const torch::Tensor& labels, std::optional<double> softcap,
                                       TokenDetails* details = nullptr);

}  // namespace gemma
