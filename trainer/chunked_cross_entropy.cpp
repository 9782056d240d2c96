#include "trainer/chunked_cross_entropy.h"

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/bf16_linear.h"

namespace gemma {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The dtype the head computes in: float64 for float64 inputs (the tests), float32 otherwise.
torch::ScalarType head_dtype(const torch::Tensor& hidden) {
  return hidden.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

torch::Tensor capped_logits(const torch::Tensor& h, const torch::Tensor& w,
                            std::optional<double> softcap) {
  // a bf16 head on a CPU without bf16 instructions multiplies in float32 (bf16_linear.h)
  torch::Tensor logits =
      bf16_products_through_f32(h) && w.scalar_type() == torch::kBFloat16 &&
              !(torch::GradMode::is_enabled() && (h.requires_grad() || w.requires_grad()))
          ? bf16_logits_through_f32(h, w)
          : torch::nn::functional::linear(h, w).to(head_dtype(h));
  if (!softcap) return logits;
  // Without a graph to record (the chunked head's forward and backward) in place: one [chunk, V]
  // float32 buffer instead of three.
  if (!torch::GradMode::is_enabled()) return logits.div_(*softcap).tanh_().mul_(*softcap);
  return torch::tanh(logits / *softcap) * *softcap;
}

// d loss / d hidden of one chunk from d loss / d logits (float32, consumed): grad · lm_head, in
// the head's dtype.
torch::Tensor hidden_grad(torch::Tensor& logit_grad, const torch::Tensor& lm_head) {
  if (lm_head.scalar_type() == torch::kBFloat16 && logit_grad.scalar_type() == torch::kFloat32 &&
      bf16_products_through_f32(lm_head) && logit_grad.is_contiguous())
    return bf16_input_grad_from_f32(logit_grad, lm_head);
  return torch::matmul(logit_grad.to(lm_head.scalar_type()), lm_head);
}

// Autograd functions carry the optional softcap as a double, 0 meaning none.
std::optional<double> softcap_of(double softcap) {
  return softcap > 0 ? std::optional<double>(softcap) : std::nullopt;
}

// The head in chunks of `chunk` tokens, shared by the loss and the per-sequence log-probs. Both
// are weighted sums of the per-token log-probabilities log softmax(softcap(h · Wᵀ))[label]: the
// forward needs only those [N] values, and the backward recomputes each chunk's logits to push
// the weights through, so no [N, V] tensor outlives one chunk.
struct ChunkedHead {
  const torch::Tensor& hidden;   // [N, H]
  const torch::Tensor& lm_head;  // [V, H]
  const torch::Tensor& labels;   // [N] int64, kIgnoreIndex where not counted
  std::optional<double> softcap;
  int64_t chunk;

  // [N] log-probabilities of the labels, 0 where ignored; `stats` and `details` (flat [N]
  // tensors, when given) from the same logits.
  torch::Tensor token_logprobs(TokenStats* stats = nullptr, TokenDetails* details = nullptr) const {
    const int64_t n = hidden.size(0);
    torch::Tensor out = torch::zeros({n}, hidden.options().dtype(head_dtype(hidden)));
    if (details != nullptr) {
      for (torch::Tensor* t : {&details->entropy, &details->mean_logit, &details->log_sum_sq_probs})
        *t = torch::zeros_like(out);
      details->is_top1 = torch::zeros({n}, out.options().dtype(torch::kBool));
    }
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t len = std::min(chunk, n - start);
      const torch::Tensor logits = capped_logits(hidden.narrow(0, start, len), lm_head, softcap);
      const torch::Tensor y = labels.narrow(0, start, len);
      const torch::Tensor target = logits.gather(1, y.clamp_min(0).unsqueeze(1)).squeeze(1);
      const torch::Tensor log_z = logits.logsumexp(1);
      const torch::Tensor counted = y != kIgnoreIndex;
      out.narrow(0, start, len).copy_((target - log_z) * counted);
      if (details != nullptr) {
        const torch::Tensor log_p = logits - log_z.unsqueeze(1);
        const torch::Tensor p = log_p.exp();
        details->entropy.narrow(0, start, len).copy_((log_z - (p * logits).sum(1)) * counted);
        details->mean_logit.narrow(0, start, len).copy_(logits.mean(1) * counted);
        details->log_sum_sq_probs.narrow(0, start, len).copy_((2 * log_p).logsumexp(1) * counted);
        details->is_top1.narrow(0, start, len).copy_((logits.argmax(1) == y) & counted);
      }
      if (stats != nullptr) {
        const torch::Tensor p_logits = (logits - log_z.unsqueeze(1)).exp_().mul_(logits);
        const torch::Tensor entropy = log_z - p_logits.sum(1);
        stats->count += counted.sum().item<int64_t>();
        stats->correct += ((logits.argmax(1) == y) & counted).sum().item<int64_t>();
        stats->entropy_sum += (entropy * counted).sum().item<double>();
      }
    }
    return out;
  }

  // d Σ_t w[t] · logprob[t] / d logits (before the softcap) for one chunk, made in `probs` (the
  // softmax of the capped logits) from onehot(label) - softmax scaled by each token's weight and,
  // through cap · tanh(x / cap), by 1 - (capped / cap)² (in `capped`'s own buffer).
  void logit_gradient(torch::Tensor& probs, torch::Tensor& capped, const torch::Tensor& y,
                      const torch::Tensor& w) const {
    probs.neg_();
    probs.scatter_add_(1, y.clamp_min(0).unsqueeze(1),
                       torch::ones({y.size(0), 1}, probs.options()));
    probs.mul_(w.unsqueeze(1));
    if (softcap) probs.mul_(capped.div_(*softcap).pow_(2).neg_().add_(1));
  }

  // For a loss whose upstream gradient is one number (the causal-LM loss), the forward and the
  // backward in one pass over the chunks (fused linear cross-entropy): the [N] log-probabilities
  // as token_logprobs gives them, `stats` when given, and d Σ_counted logprob / d hidden [N, H]
  // from the same logits, so the backward only scales it and never recomputes a logit. The
  // head's weight gets no gradient here (a frozen, tied lm_head).
  std::pair<torch::Tensor, torch::Tensor> token_logprobs_and_hidden_grad(TokenStats* stats) const {
    torch::NoGradGuard no_grad;
    const int64_t n = hidden.size(0);
    torch::Tensor out = torch::zeros({n}, hidden.options().dtype(head_dtype(hidden)));
    torch::Tensor grad_h = torch::empty_like(hidden);
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t len = std::min(chunk, n - start);
      torch::Tensor logits = capped_logits(hidden.narrow(0, start, len), lm_head, softcap);
      const torch::Tensor y = labels.narrow(0, start, len);
      const torch::Tensor target = logits.gather(1, y.clamp_min(0).unsqueeze(1)).squeeze(1);
      const torch::Tensor log_z = logits.logsumexp(1);
      const torch::Tensor counted = (y != kIgnoreIndex).to(logits.scalar_type());
      out.narrow(0, start, len).copy_((target - log_z) * counted);
      torch::Tensor probs = (logits - log_z.unsqueeze(1)).exp_();
      if (stats != nullptr) {
        // Σ_v p·logit as a batched dot product: no third [chunk, V] buffer
        const torch::Tensor p_dot_logits = torch::bmm(probs.unsqueeze(1), logits.unsqueeze(2));
        const torch::Tensor entropy = log_z - p_dot_logits.view({len});
        const torch::Tensor is_counted = y != kIgnoreIndex;
        stats->count += is_counted.sum().item<int64_t>();
        stats->correct += ((logits.argmax(1) == y) & is_counted).sum().item<int64_t>();
        stats->entropy_sum += (entropy * counted).sum().item<double>();
      }
      logit_gradient(probs, logits, y, counted);
      grad_h.narrow(0, start, len).copy_(hidden_grad(probs, lm_head));
    }
    return {out, grad_h};
  }

  // Gradients of Σ_t weights[t] · logprob[t] w.r.t. hidden and lm_head (each undefined unless
  // wanted); ignored tokens contribute nothing whatever their weight.
  std::pair<torch::Tensor, torch::Tensor> backward(const torch::Tensor& weights, bool want_grad_h,
                                                   bool want_grad_w) const {
    torch::Tensor grad_h, grad_w;
    if (want_grad_h) grad_h = torch::empty_like(hidden);
    // A frozen (tied) lm_head gets no gradient: a [vocab, hidden] buffer is the size of the
    // embedding table, so it is only made when asked for.
    if (want_grad_w)
      grad_w = torch::zeros(lm_head.sizes(), lm_head.options().dtype(head_dtype(hidden)));
    const int64_t n = hidden.size(0);
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t len = std::min(chunk, n - start);
      const torch::Tensor h = hidden.narrow(0, start, len);
      const torch::Tensor y = labels.narrow(0, start, len);
      torch::Tensor capped = capped_logits(h, lm_head, softcap);
      torch::Tensor grad = capped.softmax(1);
      const torch::Tensor w = weights.narrow(0, start, len).to(grad.scalar_type()) *
                              (y != kIgnoreIndex).to(grad.scalar_type());
      logit_gradient(grad, capped, y, w);
      if (want_grad_w) grad_w += torch::matmul(grad.t(), h.to(grad.scalar_type()));
      if (want_grad_h) grad_h.narrow(0, start, len).copy_(hidden_grad(grad, lm_head));
    }
    if (want_grad_w) grad_w = grad_w.to(lm_head.scalar_type());
    return {grad_h, grad_w};
  }
};

ChunkedHead saved_head(AutogradContext* ctx, const variable_list& saved) {
  return {saved[0], saved[1], saved[2], softcap_of(ctx->saved_data["softcap"].toDouble()),
          ctx->saved_data["chunk"].toInt()};
}

// Σ over counted tokens of -logprob, for ChunkedLoss and ChunkedLossSum. With a gradient wanted
// for hidden only (a frozen lm_head: LoRA and QLoRA), the gradient is computed here from the
// forward's own logits and saved instead of hidden; otherwise the backward recomputes the chunks.
torch::Tensor forward_sum(AutogradContext* ctx, const torch::Tensor& hidden,
                          const torch::Tensor& lm_head, const torch::Tensor& labels, double softcap,
                          int64_t chunk, TokenStats* stats, bool grad_enabled) {
  const ChunkedHead head{hidden, lm_head, labels, softcap_of(softcap), chunk};
  const bool fused = grad_enabled && hidden.requires_grad() && !lm_head.requires_grad();
  ctx->saved_data["fused"] = fused;
  ctx->saved_data["softcap"] = softcap;
  ctx->saved_data["chunk"] = chunk;
  if (fused) {
    auto [logprobs, grad_h] = head.token_logprobs_and_hidden_grad(stats);
    ctx->save_for_backward({grad_h});
    return logprobs.sum().neg();
  }
  ctx->save_for_backward({hidden, lm_head, labels});
  return head.token_logprobs(stats).sum().neg();
}

// The gradients of `scale` · Σ -logprob, padded with undefined ones to `outputs` entries.
variable_list backward_sum(AutogradContext* ctx, const torch::Tensor& scale, size_t outputs) {
  const auto saved = ctx->get_saved_variables();
  variable_list grads(outputs);
  if (ctx->saved_data["fused"].toBool()) {
    grads[0] = saved[0] * -scale;
    return grads;
  }
  const torch::Tensor weights = (-scale).expand({saved[0].size(0)});
  std::tie(grads[0], grads[1]) =
      saved_head(ctx, saved).backward(weights, ctx->needs_input_grad(0), ctx->needs_input_grad(1));
  return grads;
}

// Mean over counted tokens of -logprob: hidden [N, H], labels [N].
class ChunkedLoss : public torch::autograd::Function<ChunkedLoss> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& lm_head, const torch::Tensor& labels,
                               double softcap, int64_t chunk, bool grad_enabled) {
    const double count = std::max<int64_t>((labels != kIgnoreIndex).sum().item<int64_t>(), 1);
    ctx->saved_data["count"] = count;
    return forward_sum(ctx, hidden, lm_head, labels, softcap, chunk, nullptr, grad_enabled) / count;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    return backward_sum(ctx, grad_out[0] / ctx->saved_data["count"].toDouble(), 6);
  }
};

// Sum over counted tokens of -logprob: hidden [N, H], labels [N].
class ChunkedLossSum : public torch::autograd::Function<ChunkedLossSum> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& lm_head, const torch::Tensor& labels,
                               double softcap, int64_t chunk, TokenStats* stats,
                               bool grad_enabled) {
    return forward_sum(ctx, hidden, lm_head, labels, softcap, chunk, stats, grad_enabled);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    return backward_sum(ctx, grad_out[0], 7);
  }
};

// Per-sequence sums of logprob: hidden [B, T, H], labels [B, T] -> [B].
class ChunkedSequenceLogprobSum : public torch::autograd::Function<ChunkedSequenceLogprobSum> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& lm_head, const torch::Tensor& labels,
                               double softcap, int64_t chunk) {
    const int64_t batch = labels.size(0), length = labels.size(1);
    const torch::Tensor flat_hidden = hidden.reshape({batch * length, hidden.size(2)});
    const torch::Tensor flat_labels = labels.reshape({batch * length});
    const ChunkedHead head{flat_hidden, lm_head, flat_labels, softcap_of(softcap), chunk};
    torch::Tensor sum = head.token_logprobs().view({batch, length}).sum(1);
    ctx->save_for_backward({flat_hidden, lm_head, flat_labels});
    ctx->saved_data["softcap"] = softcap;
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["hidden_sizes"] = hidden.sizes();
    return sum;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const std::vector<int64_t> sizes = ctx->saved_data["hidden_sizes"].toIntVector();
    // Every token of sequence b carries the upstream gradient of sum[b].
    const torch::Tensor weights =
        grad_out[0].unsqueeze(1).expand({sizes[0], sizes[1]}).reshape({-1});
    auto [grad_h, grad_w] =
        saved_head(ctx, saved)
            .backward(weights, ctx->needs_input_grad(0), ctx->needs_input_grad(1));
    if (grad_h.defined()) grad_h = grad_h.view(sizes);
    return {grad_h, grad_w, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// Per-token logprob: hidden [B, T, H], labels [B, T] -> [B, T].
class ChunkedTokenLogprobs : public torch::autograd::Function<ChunkedTokenLogprobs> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& lm_head, const torch::Tensor& labels,
                               double softcap, int64_t chunk, TokenDetails* details) {
    const int64_t batch = labels.size(0), length = labels.size(1);
    const torch::Tensor flat_hidden = hidden.reshape({batch * length, hidden.size(2)});
    const torch::Tensor flat_labels = labels.reshape({batch * length});
    const ChunkedHead head{flat_hidden, lm_head, flat_labels, softcap_of(softcap), chunk};
    torch::Tensor out = head.token_logprobs(nullptr, details).view({batch, length});
    ctx->save_for_backward({flat_hidden, lm_head, flat_labels});
    ctx->saved_data["softcap"] = softcap;
    ctx->saved_data["chunk"] = chunk;
    ctx->saved_data["hidden_sizes"] = hidden.sizes();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const std::vector<int64_t> sizes = ctx->saved_data["hidden_sizes"].toIntVector();
    auto [grad_h, grad_w] = saved_head(ctx, saved)
                                .backward(grad_out[0].reshape({-1}), ctx->needs_input_grad(0),
                                          ctx->needs_input_grad(1));
    if (grad_h.defined()) grad_h = grad_h.view(sizes);
    return {grad_h, grad_w, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

void reshape_details(TokenDetails* details, int64_t batch, int64_t length) {
  if (details == nullptr) return;
  for (torch::Tensor* t :
       {&details->entropy, &details->mean_logit, &details->is_top1, &details->log_sum_sq_probs})
    *t = t->view({batch, length});
}

}  // namespace

torch::Tensor chunked_causal_lm_loss(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                     const torch::Tensor& labels, std::optional<double> softcap,
                                     int64_t chunk_tokens) {
  TORCH_CHECK(hidden.dim() == 2 && labels.dim() == 1 && hidden.size(0) == labels.size(0),
              "chunked_causal_lm_loss: hidden [N, H] and labels [N]");
  TORCH_CHECK(chunk_tokens > 0, "chunked_causal_lm_loss: chunk_tokens must be positive");
  return ChunkedLoss::apply(hidden, lm_head, labels.to(torch::kInt64), softcap.value_or(0.0),
                            chunk_tokens, torch::GradMode::is_enabled());
}

torch::Tensor chunked_causal_lm_loss_sum(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                         const torch::Tensor& labels, std::optional<double> softcap,
                                         int64_t chunk_tokens, TokenStats* stats) {
  TORCH_CHECK(hidden.dim() == 2 && labels.dim() == 1 && hidden.size(0) == labels.size(0),
              "chunked_causal_lm_loss_sum: hidden [N, H] and labels [N]");
  TORCH_CHECK(chunk_tokens > 0, "chunked_causal_lm_loss_sum: chunk_tokens must be positive");
  return ChunkedLossSum::apply(hidden, lm_head, labels.to(torch::kInt64), softcap.value_or(0.0),
                               chunk_tokens, stats, torch::GradMode::is_enabled());
}

torch::Tensor causal_lm_loss_reference(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                       const torch::Tensor& labels, std::optional<double> softcap) {
  return torch::nn::functional::cross_entropy(
      capped_logits(hidden, lm_head, softcap), labels.to(torch::kInt64),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
}

SequenceLogprobs chunked_sequence_logprobs(const torch::Tensor& hidden,
                                           const torch::Tensor& lm_head,
                                           const torch::Tensor& labels,
                                           std::optional<double> softcap, int64_t chunk_tokens) {
  TORCH_CHECK(hidden.dim() == 3 && labels.dim() == 2 && hidden.size(0) == labels.size(0) &&
                  hidden.size(1) == labels.size(1),
              "chunked_sequence_logprobs: hidden [B, T, H] and labels [B, T]");
  TORCH_CHECK(chunk_tokens > 0, "chunked_sequence_logprobs: chunk_tokens must be positive");
  const torch::Tensor y = labels.to(torch::kInt64);
  return {ChunkedSequenceLogprobSum::apply(hidden, lm_head, y, softcap.value_or(0.0), chunk_tokens),
          (y != kIgnoreIndex).sum(1)};
}

SequenceLogprobs sequence_logprobs_reference(const torch::Tensor& hidden,
                                             const torch::Tensor& lm_head,
                                             const torch::Tensor& labels,
                                             std::optional<double> softcap) {
  const torch::Tensor y = labels.to(torch::kInt64);
  const torch::Tensor keep = y != kIgnoreIndex;
  const torch::Tensor logprobs = capped_logits(hidden, lm_head, softcap)
                                     .log_softmax(-1)
                                     .gather(-1, y.clamp_min(0).unsqueeze(-1))
                                     .squeeze(-1);
  return {(logprobs * keep).sum(1), keep.sum(1)};
}

torch::Tensor chunked_token_logprobs(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                     const torch::Tensor& labels, std::optional<double> softcap,
                                     int64_t chunk_tokens, TokenDetails* details) {
  TORCH_CHECK(hidden.dim() == 3 && labels.dim() == 2 && hidden.size(0) == labels.size(0) &&
                  hidden.size(1) == labels.size(1),
              "chunked_token_logprobs: hidden [B, T, H] and labels [B, T]");
  TORCH_CHECK(chunk_tokens > 0, "chunked_token_logprobs: chunk_tokens must be positive");
  torch::Tensor out = ChunkedTokenLogprobs::apply(hidden, lm_head, labels.to(torch::kInt64),
                                                  softcap.value_or(0.0), chunk_tokens, details);
  reshape_details(details, labels.size(0), labels.size(1));
  return out;
}

torch::Tensor token_logprobs_reference(const torch::Tensor& hidden, const torch::Tensor& lm_head,
                                       const torch::Tensor& labels, std::optional<double> softcap,
                                       TokenDetails* details) {
  const torch::Tensor y = labels.to(torch::kInt64);
  const torch::Tensor keep = y != kIgnoreIndex;
  const torch::Tensor logits = capped_logits(hidden, lm_head, softcap);
  const torch::Tensor log_p = logits.log_softmax(-1);
  if (details != nullptr) {
    torch::NoGradGuard no_grad;
    const torch::Tensor p = log_p.exp();
    details->entropy = -(p * log_p).sum(-1) * keep;
    details->mean_logit = logits.mean(-1) * keep;
    details->log_sum_sq_probs = (2 * log_p).logsumexp(-1) * keep;
    details->is_top1 = (logits.argmax(-1) == y) & keep;
  }
  return log_p.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1) * keep;
}

}  // namespace gemma
