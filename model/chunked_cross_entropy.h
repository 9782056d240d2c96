// The causal-LM loss over Gemma's 262144-token vocabulary without ever holding the [tokens, vocab]
// float32 logits (about 1 MB a token, §5.2): lm_head, final softcap and cross-entropy run chunk by
// chunk of tokens, and the backward pass recomputes each chunk's logits instead of saving them.
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

// The same loss computed in one piece: the oracle for the chunked one.
torch::Tensor causal_lm_loss_reference(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                       const torch::Tensor& labels, std::optional<double> softcap);

}  // namespace gemma
